"""DPO LoRA on a random Qwen2.5-0.5B-shaped model: our preference path against trl's own DPOTrainer, one process.

    python bench/dpo_bench.py --tokenizer DIR --data pairs.jsonl [--steps 30] [--max_len 1024]

Both train the same random model (seed 0, bf16, LoRA r16 on every linear layer, activation checkpointing) on the same
pairs (ShareGPT file), batch 4 pairs, for --steps steps; the first 5 steps are warm-up and not timed. Ours: main_train's
stage dpo (chat_template tokenization, trl's DPOTrainer underneath). trl: DPOTrainer given conversational pairs and a
peft_config, tokenizing with the tokenizer's own chat template. Prints one JSON line per run: tokens per second (prompt +
answer tokens of both sides, timed steps), peak allocated GPU memory, the first losses.
On the device, carry trl 1.16, datasets, accelerate wheels and the Qwen tokenizer + dpo_en_demo.jsonl, as
bench/gpu_bench.sh does for its runs; its figures go in bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, TrainerCallback

WARMUP = 5


class StepClock(TrainerCallback):
    def __init__(self):
        self.times = []

    def on_step_end(self, args, state, control, **kwargs):
        torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def make_model(tokenizer_dir: Path, folder: Path) -> Path:
    """Qwen2.5-0.5B's shape with random weights (no download), saved with the real tokenizer."""
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_theta=1e6, tie_word_embeddings=True, torch_dtype="bfloat16")
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, folder / f.name)
    return folder


def common_flags(steps: int, max_len: int) -> dict:
    return dict(max_steps=steps, per_device_train_batch_size=4, gradient_accumulation_steps=1, learning_rate=5e-5,
                lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, save_strategy="no", report_to="none",
                bf16=True, seed=42, disable_tqdm=True, dataloader_num_workers=0, beta=0.1)


def run_ours(model_dir, data, steps, max_len) -> tuple:
    from utils.config import parse_args
    from utils.model import apply_peft, build_model
    from utils.preference import build_preference_trainer
    from utils.preference_data import build_preference_datasets
    from utils.tokenizer import build_tokenizer
    flags = {**common_flags(steps, max_len), "max_len": max_len, "stage": "dpo", "template_name": "qwen",
             "model_name_or_path": str(model_dir), "train_data_path": str(data), "output_dir": "/tmp/dpo_ours",
             "lora_dropout": 0.0, "overwrite_output_dir": True}
    argv = [x for k, v in flags.items() for x in (f"--{k}", str(v))]
    args = parse_args(["--model_name_or_path", str(model_dir), *argv])
    tokenizer, template, _ = build_tokenizer(args)
    train_set, _ = build_preference_datasets(args, tokenizer, template, log=lambda m: None)
    model = apply_peft(build_model(args, vocab_size=len(tokenizer)), args)
    trainer = build_preference_trainer(model, None, args, tokenizer, train_set, None)
    return trainer


def run_trl(model_dir, data, steps, max_len) -> tuple:
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer
    rows = []
    for line in Path(data).read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        role = {"human": "user", "gpt": "assistant"}
        rows.append({"prompt": [{"role": role[t["from"]], "content": t["value"]} for t in r["conversations"]],
                     "chosen": [{"role": "assistant", "content": r["chosen"]["value"]}],
                     "rejected": [{"role": "assistant", "content": r["rejected"]["value"]}]})
    flags = common_flags(steps, max_len)
    config = DPOConfig(output_dir="/tmp/dpo_trl", max_length=max_len, gradient_checkpointing=True,
                       gradient_checkpointing_kwargs={"use_reentrant": False}, **flags)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation="sdpa")
    peft = LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
    return DPOTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(rows),
                      processing_class=AutoTokenizer.from_pretrained(model_dir), peft_config=peft)


def measure(name, trainer) -> dict:
    clock = StepClock()
    trainer.add_callback(clock)
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    history = trainer.state.log_history
    tokens = [h["num_tokens"] for h in history if "num_tokens" in h and "loss" in h]  # cumulative, as trl counts
    timed_tokens = tokens[-1] - tokens[WARMUP - 1]
    seconds = clock.times[-1] - clock.times[WARMUP - 1]
    return {"run": name, "tokens_per_s": round(timed_tokens / seconds), "timed_steps": len(clock.times) - WARMUP,
            "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "losses": [round(h["loss"], 4) for h in history if "loss" in h][:8]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--max_len", type=int, default=1024)
    parser.add_argument("--order", default="ours,trl")
    a = parser.parse_args()
    model_dir = make_model(Path(a.tokenizer), Path("/tmp/q05_random"))
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__}), flush=True)
    for name in a.order.split(","):
        build = run_ours if name == "ours" else run_trl
        print(json.dumps(measure(name, build(model_dir, a.data, a.steps, a.max_len))), flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
