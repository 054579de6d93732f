#!/usr/bin/env bash
# One device call from the user's side: the GPU tests named in $TESTS, then the README's fast command on a random
# Qwen2.5-0.5B-shaped model (MODEL=7b: 7B-shaped) with the real alpaca data: the dry run's prediction, then the run
# under --memory_budget_gb $BUDGET with bench/user_run_memory.py's trace of where the peak rose; with
# MEMORY_REPORT=1, also the report of the tensors alive at the peak of the same run without CUDA graphs (and without
# compiled layers: the allocator's stack recording broke a compiled layer's recompute on the H200);
# EXTRA_RUNS="flags;flags": more variants of 6 steps (e.g. "--cuda_graphs false").
# Usage on the device: bash bench/gpu_user_run.sh OUT
# Carries .whl and .device_assets (assets/tokenizers/qwen2.5, assets/data/sft: copies of ../shared/assets).
set -uo pipefail
OUT=${1:-$OUT}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export DOJO_SHARED_ASSETS=$PWD/.device_assets/assets
if [ -n "${TESTS:-}" ]; then
  timeout ${TEST_TIMEOUT:-240} python3 -m pytest -q -m gpu -rs -p no:cacheprovider $TESTS 2>&1 | tail -15
fi
python3 - "${MODEL:-0.5b}" <<'PY'
import shutil, sys, torch, transformers
dims = {"0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                     intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True),
        "7b": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                   intermediate_size=18944, vocab_size=152064, tie_word_embeddings=False)}[sys.argv[1]]
config = transformers.Qwen2Config(**dims, rope_theta=1e6, max_position_embeddings=32768, rms_norm_eps=1e-6)
torch.manual_seed(0)
with torch.device("cuda"):  # random weights, initialised on the GPU (minutes on the CPU at 7B)
    transformers.Qwen2ForCausalLM._from_config(config, dtype=torch.bfloat16).save_pretrained("/tmp/model")
for f in ("vocab.json", "merges.txt", "tokenizer_config.json"):
    shutil.copy(f".device_assets/assets/tokenizers/qwen2.5/{f}", "/tmp/model")
PY
DATA=.device_assets/assets/data/sft/alpaca_en_demo.jsonl
RUN="qwen_lora_fast --model_name_or_path /tmp/model --train_data_path $DATA
  --max_steps ${STEPS:-40} --logging_steps 10 --save_steps 1000 --report_to none --disable_tqdm true"
python3 main_train.py $RUN --output_dir /tmp/dry --dry_run true 2>&1 | grep -E "predicted|error"
# the run, with bench/user_run_memory.py's trace of the training loop (main_train itself, plus [trace] lines);
# printed: main_train's own lines, and each trace line at which the peak rose or a graph was captured
PEAK_ROSE='/\[trace\]/ { p = $0; sub(/.*peak so far +/, "", p); p += 0; if (p > last + 0.005 || /capture/) print; \
  last = p > last ? p : last; next } { print }'
user_run() {  # name, flags...: the logged lines to stdout, the whole log to $OUT/name.log
  local name=$1; shift
  echo "== $name: $*"
  timeout ${RUN_TIMEOUT:-200} python3 bench/user_run_memory.py --trace "$@" > "$OUT/$name.log" 2>&1
  grep -E "\[dojo\] (memory|model|measured|done)|\[trace\]|'loss'|train_runtime|error| MB |baseline" \
    "$OUT/$name.log" | awk "$PEAK_ROSE" | tail -${TAIL:-40}
}
user_run run $RUN --output_dir /tmp/run --memory_budget_gb ${BUDGET:-1.5}
cp /tmp/run/log_history.json "$OUT/" 2>/dev/null; ls /tmp/run
if [ -n "${MEMORY_REPORT:-}" ]; then  # the same run without CUDA graphs, with the tensors alive at its peak
  user_run run_nographs --report $RUN --max_steps 6 --output_dir /tmp/run_mem --cuda_graphs false \
    --compile_layers false --memory_budget_gb ${BUDGET:-1.5}
fi
IFS=';' read -ra EXTRA <<< "${EXTRA_RUNS:-}"  # more variants, each "flags": 6 steps each
for i in "${!EXTRA[@]}"; do
  user_run "run_extra$i" $RUN --max_steps 6 --output_dir /tmp/run_extra$i --memory_budget_gb ${BUDGET:-1.5} ${EXTRA[$i]}
done
