"""The peer stacks of ../shared/bench/peer_bench.py (used unmodified), plus the model shape and unsloth rows it lacks.

peer_bench measures HF Trainer, trl and unsloth on Qwen2.5-shaped random models of its MODEL_DIMS (0.5b, 7b); its
only unsloth row is LoRA. This module loads it from its own file, adds a Qwen2.5-1.5B shape and unsloth's full
fine-tuning and QLoRA (UNSLOTH_ROWS: its worker with unsloth's own switches for them), and then runs as peer_bench does: its
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


# unsloth's other training modes, as peer_bench's unsloth_lora row otherwise: the same worker, with
# FastLanguageModel.from_pretrained given these switches (full: no adapters; qlora: NF4 on load, as unsloth's 4-bit
# recipe). Batches as peer_bench's HF rows of the same method (full_ft: 8, qlora_7b: 4).
UNSLOTH_ROWS = {
    "unsloth_full": dict(
        stack="unsloth", model="0.5b", method="full", batch=8, lr=2e-5,
        switches=dict(full_finetuning=True),
        desc="unsloth FastLanguageModel full_finetuning=True (bf16 weights), use_gradient_checkpointing='unsloth', "
             "trl SFTTrainer bs8 (no packing), adamw_torch"),
    "unsloth_qlora": dict(
        stack="unsloth", model="7b", method="qlora", batch=4, lr=2e-4,
        switches=dict(load_in_4bit=True),
        desc="unsloth FastLanguageModel load_in_4bit=True (bitsandbytes NF4) + get_peft_model LoRA r16/a32 "
             "all-linear, use_gradient_checkpointing='unsloth', trl SFTTrainer bs4 (no packing), adamw_torch"),
}


def unsloth_worker(run_worker):
    """peer_bench's worker, with UNSLOTH_ROWS' switches handed to unsloth for those rows (and no adapters for full
    fine-tuning). unsloth is imported in a scratch folder, as peer_bench's worker does (it writes a compiled cache
    into the working directory)."""
    def run(name, a):
        switches = UNSLOTH_ROWS.get(name, {}).get("switches")
        if not switches:
            return run_worker(name, a)
        import tempfile
        os.chdir(tempfile.mkdtemp(prefix=f"peer_{name}_"))
        from unsloth import FastLanguageModel
        load, adapt = FastLanguageModel.from_pretrained, FastLanguageModel.get_peft_model

        def from_pretrained(*args, **kwargs):
            return load(*args, **{**kwargs, **switches})

        def get_peft_model(model, *args, **kwargs):
            return model if switches.get("full_finetuning") else adapt(model, *args, **kwargs)

        FastLanguageModel.from_pretrained, FastLanguageModel.get_peft_model = from_pretrained, get_peft_model
        try:
            return run_worker(name, a)
        finally:
            FastLanguageModel.from_pretrained, FastLanguageModel.get_peft_model = load, adapt
    return run


def load():
    path = next((Path(p) for p in CANDIDATES if p and Path(p).is_file()), None)
    if path is None:
        sys.exit("peer_bench.py not found: set PEER_BENCH, or copy ../shared/bench/peer_bench.py to "
                 ".device_assets/bench/")
    spec = importlib.util.spec_from_file_location("peer_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.MODEL_DIMS.setdefault("1.5b", DIMS_1_5B)
    for name, spec in UNSLOTH_ROWS.items():
        module.CONFIGS.setdefault(name, {k: v for k, v in spec.items() if k != "switches"})
    module.run_worker = unsloth_worker(module.run_worker)  # worker_entry looks it up in the module
    module.__file__ = os.path.abspath(__file__)  # its orchestrator starts workers from this file
    return module


peer_bench = load()
globals().update({k: v for k, v in vars(peer_bench).items() if not k.startswith("__")})

if __name__ == "__main__":
    peer_bench.main()
