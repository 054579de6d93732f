#!/usr/bin/env bash
# One device call that compares two trees of this repository on the same GPU: bench.py rows and the Etude
# pretraining command, the rows interleaved (before, after, before, after, ...) so that a drift of the machine
# touches both sides alike. Used for a change that must keep speed and losses (a refactor).
# Usage on the device:
#   BEFORE=.gl/before ROWS="dojo_lora_graphs dojo_full_graphs" ETUDE_STEPS=60 bash bench/gpu_before_after.sh $OUT
# BEFORE: a copy of the older tree (git archive COMMIT | tar -x -C .gl/before), carried with .whl and .device_assets;
# AFTER: the newer tree (default: this one).
# ROWS: bench.py rows (each its own bench.py call, --steps/--warmup from STEPS/WARMUP); ETUDE_STEPS 0: no pretraining.
set -uo pipefail
OUT=$1; ROOT=$PWD; BEFORE=$(cd "${BEFORE:-.gl/before}" && pwd); AFTER=$(cd "${AFTER:-.}" && pwd); mkdir -p "$OUT"
[ -n "${SKIP_INSTALL:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export DOJO_SHARED_ASSETS=$ROOT/.device_assets/assets
LOG=$OUT/before_after.log
(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo no GPU) | tee "$LOG"
PYTHONPATH=/tmp/site ${PYTHON:-python3} -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__,
peft.__version__)" 2>&1 | tail -1 | tee -a "$LOG"

in_tree() {  # in_tree TREE COMMAND...: run with that tree first on the path, from its root
  local tree=$1; shift
  (cd "$tree" && PYTHONPATH=/tmp/site:$tree "$@")
}
for row in ${ROWS:-dojo_lora_graphs dojo_dora_graphs_factored dojo_full_graphs}; do
  for side in before after; do
    tree=$AFTER; [ $side = before ] && tree=$BEFORE
    echo "== $row $side" | tee -a "$LOG"
    in_tree "$tree" timeout "${ROW_TIMEOUT:-200}" ${PYTHON:-python3} bench/bench.py --out "/tmp/ba_$side" \
      --peer_bench "$ROOT/.device_assets/bench/peer_bench.py" --peers "" --ours "$row" --model "${MODEL:-0.5b}" \
      --steps "${STEPS:-20}" --warmup "${WARMUP:-20}" --deadline_s "${ROW_TIMEOUT:-200}" 2>&1 \
      | grep -v -i warn | grep -E "tokens/s|loss|GB|$row|Error|error" | tail -8 | tee -a "$LOG"
    cp "/tmp/ba_$side/results.json" "$OUT/${row}_$side.json" 2>/dev/null
  done
done
GPT2="--preset etude-v0.1 --config_override num_hidden_layers=12 --config_override max_position_embeddings=1024 \
  --config_override tie_word_embeddings=true --config_override bias=false"
if [ "${ETUDE_STEPS:-60}" -gt 0 ]; then
  for side in before after; do
    tree=$AFTER; [ $side = before ] && tree=$BEFORE
    echo "== etude pretrain $side" | tee -a "$LOG"
    in_tree "$tree" timeout "${PRETRAIN_TIMEOUT:-150}" ${PYTHON:-python3} -m etude_model.pretrain $GPT2 --fused_ce \
      --config_override autocast_residual=true --tiktoken_file "$ROOT/.device_assets/gpt2.tiktoken" \
      --data "$ROOT/.device_assets/pretrain" --text_split line --block_size 1024 --batch_size 60 \
      --grad_accum_steps 1 --max_steps "${ETUDE_STEPS:-60}" --warmup_steps 5 --log_every 10 --eval_every 100000 \
      --eval_iters 1 --save_every 100000 --compile --no_progress --cache_dir /tmp/etude_cache_$side \
      --output_dir /tmp/pt_$side 2>&1 | grep -v -i warn | tail -3 | tee -a "$LOG"
    cp /tmp/pt_$side/loss_log.jsonl "$OUT/pretrain_$side.jsonl" 2>/dev/null
  done
fi
