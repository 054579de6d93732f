#!/usr/bin/env bash
# One device call: our fast-path rows of bench.py (no peers), then Etude pretraining throughput at nanoGPT's
# GPT-2-124M configuration. Usage on the device: bash bench/gpu_explore.sh OUT
set -uo pipefail
OUT=${1:-$OUT}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)"
timeout 380 python3 bench/bench.py --out "$OUT/bench" --peer_bench .device_assets/bench/peer_bench.py --peers "" \
  --steps 15 --warmup 5 --profile_steps 2 --deadline_s 370 --ours "${OURS:-dojo_lora_fast,dojo_lora_fast_liger}"
# Etude at nanoGPT's GPT-2-124M configuration: gpu_etude.sh's loop over the user's pretrain command
ETUDE_MB="${ETUDE_MB:-12x5 60x1}" BENCH_MB="" bash bench/gpu_etude.sh "$OUT"
