#!/usr/bin/env bash
# One device call: optional GPU tests, then bench.py (peers and our rows in the same call).
# Usage on the device: TESTS="tests/utils/..." bash bench/gpu_bench.sh OUT [bench.py arguments]
# Needs .whl (bash ../shared/bench/gpu_wheels.sh .whl) and .device_assets/bench/peer_bench.py, both carried.
# Everything returns as OUT/bench.log, OUT/results.json and OUT/logs.tgz (the device tool returns 8 files at most).
set -uo pipefail
OUT=$1; shift; W=/tmp/bench_out; mkdir -p "$OUT" "$W"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/bench.log"
python3 -c "import torch, transformers, peft, trl; print(torch.__version__, torch.version.cuda, transformers.__version__,
peft.__version__, trl.__version__)" 2>&1 | tail -1 | tee -a "$OUT/bench.log"
if [ -n "${TESTS:-}" ]; then
  timeout "${TESTS_TIMEOUT:-240}" python3 -m pytest -q -p no:cacheprovider -m gpu $TESTS 2>&1 | tail -25 | tee -a "$OUT/bench.log"
fi
timeout "${BENCH_TIMEOUT:-540}" python3 bench/bench.py --out "$W" --peer_bench .device_assets/bench/peer_bench.py "$@" \
  2>&1 | grep --line-buffered -v -i "warn" | tee -a "$OUT/bench.log"
cp "$W/results.json" "$OUT/" 2>/dev/null
tar czf "$OUT/logs.tgz" -C "$W" . 2>/dev/null
