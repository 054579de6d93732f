#!/usr/bin/env bash
# One device call for Etude pretraining speed: GPU tests named in $TESTS, bench/etude_bench.py's variants (with a
# kernel profile) for each split in $BENCH_MB (default 60x1; empty: none), then the user's command,
# `python -m etude_model.pretrain`, at nanoGPT's GPT-2-124M configuration for each split in $ETUDE_MB and each flag
# set in $ETUDE_FLAGS (";"-separated, an empty set is the plain loop), $STEPS steps each (default 40).
# Usage on the device: bash bench/gpu_etude.sh OUT
set -uo pipefail
OUT=${1:-$OUT}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -c "import torch, transformers as t; print(torch.__version__, t.__version__, torch.cuda.get_device_name())"
if [ -n "${TESTS:-}" ]; then
  timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider $TESTS 2>&1 | tail -15
fi
for split in ${BENCH_MB-"60x1"}; do
  set -- ${split/x/ }
  timeout ${BENCH_TIMEOUT:-300} python3 bench/etude_bench.py --peer_bench .device_assets/bench/peer_bench.py \
    --variants "${VARIANTS:-default}" --batch $1 --accum $2 --steps 20 --warmup 10 \
    --profile ${PROFILE:-0} --out "$OUT/etude_bench_$1x$2.json" 2>&1 | grep -v -i warn
done
GPT2="--preset etude-v0.1 --config_override num_hidden_layers=12 --config_override max_position_embeddings=1024 \
  --config_override tie_word_embeddings=true --config_override bias=false"
STEPS=${STEPS:-40}
IFS=';' read -ra FLAG_SETS <<< "${ETUDE_FLAGS:-}"; [ ${#FLAG_SETS[@]} -eq 0 ] && FLAG_SETS=("")
for mb in ${ETUDE_MB:-}; do
  set -- ${mb/x/ }
  for i in "${!FLAG_SETS[@]}"; do
    flags=${FLAG_SETS[$i]}; run=$1x$2_$i
    echo "== pretrain $mb, flags: ${flags:-none}"
    timeout ${PRETRAIN_TIMEOUT:-120} python3 -m etude_model.pretrain $GPT2 $flags \
      --tiktoken_file .device_assets/gpt2.tiktoken --data .device_assets/pretrain --text_split line \
      --block_size 1024 --batch_size $1 --grad_accum_steps $2 --max_steps $STEPS --warmup_steps 5 \
      --log_every ${LOG_EVERY:-10} --eval_every ${EVAL_EVERY:-100000} --eval_iters 1 --save_every 100000 --compile \
      --no_progress --peak_tflops ${PEAK_TFLOPS:-788} --cache_dir /tmp/etude_cache --output_dir /tmp/pt_$run \
      --overwrite_output_dir \
      2>&1 | grep -v -i warn | tail -4
    cp /tmp/pt_$run/loss_log.jsonl "$OUT/pretrain_$run.jsonl"; tail -2 "$OUT/pretrain_$run.jsonl"
  done
done
