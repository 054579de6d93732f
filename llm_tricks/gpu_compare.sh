#!/usr/bin/env bash
# The GPU comparison of LoRA, DoRA, LoRA+, rsLoRA and PiSSA (equal steps), in one device call:
# (1) on a pretrained model: etude-small pretrained here on the zh+en corpus (as in etude_model/gpu_run.sh), then
#     adapted on alpaca_en; (2) on a larger random-init Qwen2 (hidden 512, 8 layers) for clean per-step timings.
# Usage: bash llm_tricks/gpu_compare.sh ASSETS OUT   (ASSETS: pretrain/, sft/, qwen2.5/ from ../shared/assets)
set -euo pipefail
A=${1:-.device_assets}; OUT=${2:-runs/tricks_gpu}; mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
W=runs/tricks_gpu_work; rm -rf "$W"; mkdir -p "$W"
python3 -m etude_model.train_tokenizer --data "$A/pretrain" --vocab_size 16000 --text_split line --output_dir "$W/tok"
python3 -m etude_model.pretrain --preset etude-small --tokenizer "$W/tok" --data "$A/pretrain" --text_split line \
  --block_size 512 --batch_size 64 --max_steps 600 --warmup_steps 50 --lr 1e-3 --min_lr 1e-4 --eval_every 600 \
  --log_every 200 --save_every 100000 --compile --no_progress --output_dir "$W/pretrain" --cache_dir "$W/cache" \
  2>&1 | grep -v Writing
python3 llm_tricks/compare_adapters.py --data "$A/sft/alpaca_en_demo.jsonl" --tokenizer "$W/pretrain" \
  --model "$W/pretrain" --device cuda --bf16 --steps 300 --batch-size 16 --seq-len 256 --lr 5e-4 --rank 16 \
  --alpha 32 --warmup 20 --loss-window 30 2>&1 | tee "$OUT/pretrained_etude.txt"
python3 llm_tricks/compare_adapters.py --data "$A/sft/alpaca_en_demo.jsonl" --tokenizer "$A/qwen2.5" \
  --device cuda --bf16 --steps 300 --batch-size 16 --seq-len 256 --lr 1e-3 --rank 16 --alpha 32 --hidden 512 \
  --intermediate 1408 --layers 8 --heads 8 --kv-heads 4 --warmup 20 --loss-window 30 2>&1 | tee "$OUT/random_qwen2.txt"
