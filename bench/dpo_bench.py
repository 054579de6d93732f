"""DPO LoRA on a random Qwen2.5-0.5B-shaped model: trl's DPOTrainer and our two preference paths on the same pairs.

Device command (one GPU; from the repository root; carry .whl and .device_assets, which hold the
wheels of bench/gpu_bench.sh and the Qwen2.5 tokenizer + dpo_en_demo.jsonl under .device_assets/assets):
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site:$PWD DOJO_SHARED_ASSETS=$PWD/.device_assets/assets HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
      TOKENIZERS_PARALLELISM=false python3 bench/dpo_bench.py --out $OUT/dpo_bench.json --deadline_s 230
CPU plumbing check (a tiny model; most of its time is trl's CPU log-prob head over the 152k-word vocabulary):
    python bench/dpo_bench.py --model tiny --steps 4 --warmup 1 --batch 2 --max_len 128 --deadline_s 900 \
      --out /tmp/dpo_cpu/dpo_bench.json

Every row trains the same random model (--model 0.5b: ../shared/bench/peer_bench.py's "0.5b" dims; seed 0) with LoRA
r16/alpha32, dropout 0, on every linear layer but the head, beta 0.1, sigmoid loss, activation checkpointing, bf16
on CUDA (fp32 on CPU), --batch pairs per step, on the same pairs in the same order: dpo_en_demo.jsonl (../shared, or
DOJO_SHARED_ASSETS) rendered by chat_template/ with the Qwen2.5 tokenizer, cut to --max_len. Rows, each in its own
process (a fresh CUDA allocator and peak):
  trl         trl's DPOTrainer with its defaults (padded batches, its fused log-prob head, a LoRA from peft_config,
              the reference = the adapter off), given the tokenized pairs (its _prepare_dataset skipped, nothing else)
  ours_plain  utils/preference.py's build_preference_trainer (stage dpo), as main_train.py runs it
  ours_fast   the same with padding_free true (utils/preference_fast.py) and, on CUDA, attn_implementation varlen
  ours_compiled  ours_fast with compile_layers true (each decoder layer through torch.compile; the first steps
              compile, so --warmup must cover them)
(trl 1.16's own padding_free is switched off inside trl, "temporarily unavailable": no row.)
Reported per row: tokens/s over the timed steps (after --warmup; non-pad prompt + answer tokens of chosen and
rejected, trl's num_tokens count), peak allocated GPU GB over the whole run, the loss of every step. The losses must
match across rows (the last table column: the largest difference from the trl row's, bf16 rounding on CUDA).
One JSON (--out) and a printed table; each row's output in dpo_bench_ROW.log beside it. Each row gets an equal share of
what is left of --deadline_s: it stops early (fewer timed steps) near 80% of it, and is killed at 100%.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ASSETS = Path(os.environ.get("DOJO_SHARED_ASSETS", REPO.parent / "shared" / "assets"))
ROWS = ("trl", "ours_plain", "ours_fast", "ours_compiled")
# Qwen2.5-0.5B's dims (as ../shared/bench/peer_bench.py's "0.5b"); tiny: the plumbing on a CPU
DIMS = {"0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                     intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True, rope_theta=1_000_000.0,
                     max_position_embeddings=32768, rms_norm_eps=1e-6),
        "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=128, vocab_size=151936, tie_word_embeddings=True, rope_theta=1_000_000.0,
                     max_position_embeddings=32768, rms_norm_eps=1e-6)}


def make_model(name: str, folder: Path) -> Path:
    """The random model (seed 0) in bf16, saved with the Qwen2.5 tokenizer's files."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    config = Qwen2Config(**DIMS[name], use_cache=False)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # a GPU initialises 0.5B weights in a blink
        Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    for f in (ASSETS / "tokenizers" / "qwen2.5").iterdir():
        shutil.copy(f, folder / f.name)
    return folder


def our_args(a, padding_free: bool, compiled: bool = False):
    import torch
    from utils.config import parse_args
    cuda = torch.cuda.is_available()
    flags = dict(model_name_or_path=a.model_dir, train_data_path=str(ASSETS / "data" / "dpo" / "dpo_en_demo.jsonl"),
                 output_dir=f"/tmp/dpo_bench_{a.row}", max_len=a.max_len, eval_ratio=0, max_steps=a.steps,
                 per_device_train_batch_size=a.batch, gradient_accumulation_steps=1, learning_rate=5e-5,
                 lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, save_steps=10**6, report_to="none",
                 lora_rank=16, lora_alpha=32, lora_dropout=0.0, beta=0.1, seed=42, disable_tqdm="true",
                 torch_dtype="bfloat16" if cuda else "float32", bf16=str(cuda).lower(), dataloader_num_workers=0,
                 padding_free=str(padding_free).lower(), compile_layers=str(compiled).lower(),
                 attn_implementation="varlen" if padding_free and cuda else "sdpa")
    return parse_args(["qwen_dpo", *[x for k, v in flags.items() for x in (f"--{k}", str(v))]])


def build_row(a):
    """The row's trainer, on the tokenized pairs of utils/preference_data.py."""
    from utils.model import apply_peft, build_model, compile_layers
    from utils.preference import DojoDPOTrainer, build_preference_trainer
    from utils.preference_data import build_preference_datasets
    from utils.tokenizer import build_tokenizer
    args = our_args(a, padding_free=a.row in ("ours_fast", "ours_compiled"), compiled=a.row == "ours_compiled")
    tokenizer, template, _ = build_tokenizer(args)
    train_set = build_preference_datasets(args, tokenizer, template, log=lambda message: None)[0]
    if a.row != "trl":
        model = compile_layers(apply_peft(build_model(args, vocab_size=len(tokenizer)), args), args)
        return build_preference_trainer(model, None, args, tokenizer, train_set, None)
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig
    cuda = torch.cuda.is_available()
    config = DPOConfig(output_dir=args.output_dir, max_steps=a.steps, per_device_train_batch_size=a.batch,
                       learning_rate=5e-5, lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
                       report_to="none", bf16=cuda, seed=42, disable_tqdm=True, dataloader_num_workers=0, beta=0.1,
                       max_length=None)  # rows come cut to max_len
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.bfloat16 if cuda else torch.float32,
                                                 attn_implementation="sdpa")
    peft = LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
    # DojoDPOTrainer is trl's DPOTrainer that takes tokenized rows as they are (its only override)
    return DojoDPOTrainer(model=model, args=config, train_dataset=train_set, processing_class=tokenizer,
                          peft_config=peft)


def run_row(a) -> dict:
    import torch
    from transformers import TrainerCallback
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    class StepClock(TrainerCallback):
        """Each step's end; stops the run once the row's share of the deadline is near (a shorter timed span, not a
        lost row)."""
        times = []

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            self.times.append(time.perf_counter())
            if time.time() > a.stop_at and len(self.times) > a.warmup + 1:
                control.should_training_stop = True

    trainer = build_row(a)
    trainer.add_callback(StepClock())
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h and "num_tokens" in h]
    tokens = [h["num_tokens"] for h in logs]  # cumulative non-pad tokens, trl's count, every step (logging_steps 1)
    times, w = StepClock.times, a.warmup
    if len(times) <= w:
        raise RuntimeError(f"only {len(times)} steps before the row's deadline: nothing timed after --warmup {w}")
    return {"row": a.row, "trainer": type(trainer).__name__, "steps": len(times), "timed_steps": len(times) - w,
            "tokens_per_s": round((tokens[-1] - tokens[w - 1]) / (times[-1] - times[w - 1]), 1),
            "peak_alloc_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None,
            "tokens_per_step": round(tokens[-1] / len(tokens)), "losses": [h["loss"] for h in logs]}


def table(rows: list[dict]) -> str:
    base = next((r for r in rows if r["row"] == "trl" and "losses" in r), None)
    lines = ["| row | tokens/s | vs trl | peak alloc GB | steps | loss first -> last | max loss diff vs trl |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "losses" not in r:
            lines.append(f"| {r['row']} | {r.get('error', 'no result')} | | | | | |")
            continue
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        diff = (max(abs(x - y) for x, y in zip(r["losses"], base["losses"])) if base else None)
        lines.append(f"| {r['row']} | {r['tokens_per_s']:,.0f} | {ratio} | {r['peak_alloc_gb']} | {r['steps']} | "
                     f"{r['losses'][0]:.4f} -> {r['losses'][-1]:.4f} | {'-' if diff is None else f'{diff:.2e}'} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(DIMS), default="0.5b")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=8, help="steps not timed (the first one's set-up included)")
    parser.add_argument("--batch", type=int, default=8, help="pairs per step (trl's default)")
    parser.add_argument("--max_len", type=int, default=1024)
    parser.add_argument("--deadline_s", type=float, default=230, help="the whole bench, model building included")
    parser.add_argument("--out", default="/tmp/dpo_bench.json")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # internal: run one row in this process
    parser.add_argument("--model_dir", help=argparse.SUPPRESS)
    parser.add_argument("--stop_at", type=float, default=float("inf"), help=argparse.SUPPRESS)  # time.time()
    a = parser.parse_args()
    if not 1 <= a.warmup < a.steps:
        parser.error("need 1 <= --warmup < --steps")
    if a.row:
        Path(a.out).write_text(json.dumps(run_row(a)))
        return
    start = time.perf_counter()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    model_dir = Path(f"/tmp/dpo_bench_model_{a.model}")
    shutil.rmtree(model_dir, ignore_errors=True)
    make_model(a.model, model_dir)
    rows = []
    names = a.rows.split(",")
    for i, name in enumerate(names):
        left = a.deadline_s - (time.perf_counter() - start)
        budget = left / (len(names) - i)  # an equal share of what is left: a stuck row cannot starve the others
        out, log = Path(f"/tmp/dpo_bench_row_{name}.json"), Path(a.out).with_name(f"dpo_bench_{name}.log")
        out.unlink(missing_ok=True)
        cmd = [sys.executable, __file__, "--row", name, "--model_dir", str(model_dir), "--out", str(out),
               "--stop_at", str(time.time() + 0.8 * budget),  # the row stops itself; the timeout is the backstop
               *[x for k in ("steps", "warmup", "batch", "max_len") for x in (f"--{k}", str(getattr(a, k)))]]
        try:
            with log.open("w") as sink:
                done = subprocess.run(cmd, timeout=max(budget, 1), stdout=sink, stderr=subprocess.STDOUT)
            rows.append(json.loads(out.read_text()) if done.returncode == 0 else
                        {"row": name, "error": f"exit {done.returncode}: "
                                               f"{log.read_text().strip().splitlines()[-1:]} (all: {log})"})
        except subprocess.TimeoutExpired:
            rows.append({"row": name, "error": f"past its {budget:.0f} s share of --deadline_s (log: {log})"})
        print(json.dumps(rows[-1]), flush=True)
    import torch
    result = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "model": a.model, "batch_pairs": a.batch, "steps": a.steps,
              "warmup": a.warmup, "max_len": a.max_len, "seconds": round(time.perf_counter() - start), "rows": rows}
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(table(rows))
    print(f"{result['device']}, torch {result['torch']}, {result['seconds']} s; JSON: {a.out}")


if __name__ == "__main__":
    main()
