#!/usr/bin/env bash
# One device call: our fast-path rows of bench.py (no peers), then Etude pretraining throughput at nanoGPT's
# GPT-2-124M configuration. Usage on the device: bash bench/gpu_explore.sh OUT
set -uo pipefail
OUT=${1:-$OUT}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)"
timeout 380 python3 bench/bench.py --out "$OUT/bench" --peer_bench .device_assets/bench/peer_bench.py --peers "" \
  --steps 15 --warmup 5 --profile_steps 2 --deadline_s 370 --ours "${OURS:-dojo_lora_fast,dojo_lora_fast_liger}"
GPT2="--preset etude-v0.1 --config_override num_hidden_layers=12 --config_override max_position_embeddings=1024 \
  --config_override tie_word_embeddings=true --config_override bias=false"
for mb in ${ETUDE_MB:-"12 5" "60 1"}; do
  set -- $mb
  timeout 100 python3 -m etude_model.pretrain $GPT2 --tiktoken_file .device_assets/gpt2.tiktoken \
    --data .device_assets/pretrain --text_split line --block_size 1024 --batch_size $1 --grad_accum_steps $2 \
    --max_steps 30 --warmup_steps 5 --log_every 10 --eval_every 100000 --eval_iters 1 --save_every 100000 --compile \
    --no_progress --peak_tflops 788 --cache_dir /tmp/etude_cache --output_dir /tmp/pt_$1_$2 2>&1 | grep -v Warn | tail -6
  tail -2 /tmp/pt_$1_$2/loss_log.jsonl
done
