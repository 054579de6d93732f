"""The peer stacks of ../shared/bench/peer_bench.py (used unmodified), plus the model shape it lacks.

peer_bench measures HF Trainer, trl and unsloth on Qwen2.5-shaped random models of its MODEL_DIMS (0.5b, 7b).
This module loads it from its own file, adds a Qwen2.5-1.5B shape, and then runs as peer_bench does: its
orchestrator starts one worker process per configuration with `python <this file> --worker ...`, so each worker
sees the added shape too. bench.py takes it as its `--peer_bench`, so our rows and the peers' draw the same shapes:

    python bench/bench.py --peer_bench bench/peers.py --model 1.5b --peers unsloth_lora:1.5b --ours dojo_lora_graphs

peer_bench's file: $PEER_BENCH, else .device_assets/bench/peer_bench.py (what the device calls carry), else
../shared/bench/peer_bench.py beside the checkout.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CANDIDATES = [os.environ.get("PEER_BENCH", ""), REPO / ".device_assets" / "bench" / "peer_bench.py",
              REPO.parent / "shared" / "bench" / "peer_bench.py"]

# Qwen2.5-1.5B's dimensions (its config.json)
DIMS_1_5B = dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                 intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True,
                 rope_theta=1_000_000.0, max_position_embeddings=32768, rms_norm_eps=1e-6)


def load():
    path = next((Path(p) for p in CANDIDATES if p and Path(p).is_file()), None)
    if path is None:
        sys.exit("peer_bench.py not found: set PEER_BENCH, or copy ../shared/bench/peer_bench.py to "
                 ".device_assets/bench/")
    spec = importlib.util.spec_from_file_location("peer_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.MODEL_DIMS.setdefault("1.5b", DIMS_1_5B)
    module.__file__ = os.path.abspath(__file__)  # its orchestrator starts workers from this file
    return module


peer_bench = load()
globals().update({k: v for k, v in vars(peer_bench).items() if not k.startswith("__")})

if __name__ == "__main__":
    peer_bench.main()
