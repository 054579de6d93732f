"""Compare LoRA, DoRA, LoRA+, rsLoRA and PiSSA at equal steps: final train loss, eval loss, ms/step, params.

Every method starts from the same base weights, sees the same batches in the same order, and uses the
same optimizer (AdamW, constant lr) and the same rank, alpha and target modules. Only the adapter
differs, through peft:

    lora       LoraConfig(r, alpha)                      scaling alpha / r, B = 0
    dora       ... use_dora=True                          + magnitude vector, norm detached
    lora_plus  LoRA + peft.optimizers.create_loraplus_optimizer(loraplus_lr_ratio)
    rslora     ... use_rslora=True                        scaling alpha / sqrt(r)
    pissa      ... init_lora_weights="pissa"              A, B from the top-r SVD of W, W -> residual

Data: an alpaca-style JSONL ({"instruction", "input", "output"}), tokenized with a real tokenizer;
the loss is on the response tokens only. The default model is a tiny Qwen2-architecture network with
random weights (hidden 128, 2 layers). Its vocabulary is compacted to the token ids that occur in the
data (11,076 of Qwen's 151,665 with the default 128-token cut), which changes nothing for a randomly
initialised model but keeps it at 1.78M parameters instead of about 20M. Use --model PATH to start from a
real local checkpoint instead (no compaction then).

CPU (the run in llm_tricks/README.md):
    python llm_tricks/compare_adapters.py --data ../shared/assets/data/sft/alpaca_en_demo.jsonl --steps 30 --threads 1 \
        --tokenizer ../shared/assets/tokenizers/qwen2.5
GPU (adds a peak-memory column):
    python llm_tricks/compare_adapters.py --data ... --device cuda --steps 500 --bf16 [--model PATH]
"""

import argparse
import copy
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from peft.optimizers import create_loraplus_optimizer
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from utils.model_source import load_saved_model  # any model type of the project (Etude) too

REPO = Path(__file__).resolve().parents[1]
# Qwen2.5's tokenizer in the offline assets folder (DOJO_SHARED_ASSETS, as the tests and device scripts set it)
ASSETS = os.environ.get("DOJO_SHARED_ASSETS")
DEFAULT_TOKENIZER = Path(ASSETS) / "tokenizers" / "qwen2.5" if ASSETS else None
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
METHODS = ["lora", "dora", "lora_plus", "rslora", "pissa"]
PROMPT = "### Instruction:\n{instruction}\n\n{input_block}### Response:\n"


def load_examples(path: str, tokenizer, seq_len: int) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per example; labels are -100 on the prompt so only the response is learned."""
    examples = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        input_block = f"### Input:\n{row['input']}\n\n" if row.get("input") else ""
        prompt = tokenizer(PROMPT.format(instruction=row["instruction"], input_block=input_block))["input_ids"]
        response = tokenizer(row["output"])["input_ids"] + [tokenizer.eos_token_id]
        ids = (prompt + response)[:seq_len]
        labels = ([-100] * len(prompt) + response)[:seq_len]
        if any(label != -100 for label in labels[1:]):  # keep only examples with a response left to learn
            examples.append((ids, labels))
    return examples


def compact_vocab(examples, pad_id: int):
    """Renumber the token ids that occur (and the pad id) to 0 .. V-1: a random model has no use for the others.

    Returns (remapped examples, new pad id, V).
    """
    used = sorted({t for ids, _ in examples for t in ids} | {pad_id})
    new_id = {t: i for i, t in enumerate(used)}
    remapped = [
        ([new_id[t] for t in ids], [new_id[t] if t != -100 else -100 for t in labels]) for ids, labels in examples
    ]
    return remapped, new_id[pad_id], len(used)


def make_batch(examples, pad_id: int, device):
    length = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, (x, y) in enumerate(examples):  # right padding, padded positions never scored
        ids[row, : len(x)], labels[row, : len(y)], mask[row, : len(x)] = torch.tensor(x), torch.tensor(y), 1
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


def build_base(args, vocab_size: int):
    if args.model:
        return load_saved_model(args.model, dtype=torch.float32)
    config = Qwen2Config(
        vocab_size=vocab_size, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.seq_len, tie_word_embeddings=True,
    )
    torch.manual_seed(args.seed)
    return Qwen2ForCausalLM(config)


def wrap(base, method: str, args):
    kwargs = {"r": args.rank, "lora_alpha": args.alpha, "target_modules": TARGETS, "lora_dropout": 0.0}
    kwargs.update({"dora": {"use_dora": True}, "rslora": {"use_rslora": True},
                   "pissa": {"init_lora_weights": "pissa"}}.get(method, {}))
    torch.manual_seed(args.seed + 1)  # the same A init for every method that draws one
    model = get_peft_model(copy.deepcopy(base).to(args.device), LoraConfig(**kwargs))  # PiSSA's SVD runs on device
    params = [p for p in model.parameters() if p.requires_grad]
    if method == "lora_plus":
        opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=args.lr, loraplus_lr_ratio=args.loraplus_ratio)
    else:
        opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    return model, opt, sum(p.numel() for p in params)


@torch.no_grad()
def eval_loss(model, examples, args, pad_id) -> float:
    """Token-weighted mean cross-entropy over the response tokens of the eval set."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), args.batch_size):
        batch = make_batch(examples[i : i + args.batch_size], pad_id, args.device)
        with torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum", ignore_index=-100
        )
        total, count = total + loss.item(), count + (labels != -100).sum().item()
    model.train()
    return total / count


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train(method, base, train_set, eval_set, order, args, pad_id):
    model, opt, n_trainable = wrap(base, method, args)
    model.train()
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    losses, times = [], []
    for step in range(args.steps):
        batch = make_batch([train_set[i] for i in order[step]], pad_id, args.device)
        sync(args.device)
        start = time.perf_counter()
        with torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.bf16):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(args.device)
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    timed = times[args.warmup :] or times
    last = losses[-args.loss_window :]
    return {
        "method": method, "train_loss": sum(last) / len(last), "eval_loss": eval_loss(model, eval_set, args, pad_id),
        "ms_per_step": 1000 * sum(timed) / len(timed), "trainable": n_trainable,
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else None,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="alpaca-style JSONL")
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER and str(DEFAULT_TOKENIZER),
                        required=DEFAULT_TOKENIZER is None, help="tokenizer folder (default: Qwen2.5's in "
                        "$DOJO_SHARED_ASSETS/tokenizers)")
    parser.add_argument("--model", default=None, help="local HF checkpoint; default: tiny random Qwen2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--eval-examples", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16)
    parser.add_argument("--loraplus-ratio", type=float, default=16.0)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--intermediate", type=int, default=344)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of ms/step")
    parser.add_argument("--loss-window", type=int, default=10, help="train loss = mean of the last N steps")
    parser.add_argument("--bf16", action="store_true", help="autocast to bfloat16 (GPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 avoids contention)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    examples = load_examples(args.data, tokenizer, args.seq_len)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    vocab_size = len(tokenizer)
    if not args.model:
        examples, pad_id, vocab_size = compact_vocab(examples, pad_id)
    rng = random.Random(args.seed)
    rng.shuffle(examples)
    eval_set, train_set = examples[: args.eval_examples], examples[args.eval_examples :]
    order = [rng.sample(range(len(train_set)), args.batch_size) for _ in range(args.steps)]  # shared by all methods

    base = build_base(args, vocab_size)
    n_base = sum(p.numel() for p in base.parameters())
    initial = eval_loss(base.to(args.device), eval_set, args, pad_id)
    base.to("cpu")
    results = [train(m, base, train_set, eval_set, order, args, pad_id) for m in args.methods.split(",")]

    cuda = args.device.startswith("cuda")
    device_name = torch.cuda.get_device_name() if cuda else f"{cpu_name()}, {os.cpu_count()} cores"
    print(f"command: python {' '.join(sys.argv)}" if argv is None else f"argv: {argv}")
    print(f"device: {args.device} ({device_name}, torch threads {torch.get_num_threads()}); torch {torch.__version__}, "
          f"transformers {transformers.__version__}, peft {peft.__version__}")
    print(f"model: {args.model or 'random Qwen2'} with {n_base / 1e6:.2f}M parameters, vocab {vocab_size}; "
          f"{len(train_set)} train / {len(eval_set)} eval examples; {args.steps} steps x batch {args.batch_size}, "
          f"seq <= {args.seq_len}, lr {args.lr}, r {args.rank}, alpha {args.alpha}, bf16 {args.bf16}")
    print(f"eval loss before training: {initial:.4f}\n")
    # peak GPU memory only means something on a GPU
    print(f"| method | train loss (mean of last {args.loss_window} steps) | eval loss | ms/step | trainable params |"
          + (" peak GPU MiB |" if cuda else ""))
    print("|---|---|---|---|---|" + ("---|" if cuda else ""))
    for r in results:
        cells = [r["method"], f"{r['train_loss']:.4f}", f"{r['eval_loss']:.4f}", f"{r['ms_per_step']:.1f}",
                 f"{r['trainable']:,}"] + ([f"{r['peak_mib']:.0f}"] if cuda else [])
        print("| " + " | ".join(cells) + " |")
    return results


if __name__ == "__main__":
    main()
