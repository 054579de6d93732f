"""Pretrain an Etude model from scratch on raw text (nanoGPT-style loop, Hugging Face checkpoints).

    python -m etude_model.pretrain --preset etude-tiny --data $DOJO_SHARED_ASSETS/data/pretrain \
        --output_dir runs/etude-tiny --max_steps 2000

What the loop does, in order: tokenize the corpus once into a cached token file (etude_model/data.py),
hold out the end of it for validation, and train on packed block_size windows with AdamW
(weight decay on matrices only), linear warmup + cosine decay to min_lr, gradient accumulation and
clipping, bf16 autocast on CUDA (fp32 on CPU). Every --eval_every steps it measures the validation
loss; it prints tokens/s and MFU; it saves Hugging Face checkpoints (model + tokenizer +
training_state.pt) atomically, and `--resume` continues bit-for-bit (model, optimizer, step, RNG
and data position are all restored). Outputs in --output_dir: the final model at the top level
(AutoModelForCausalLM.from_pretrained(output_dir) after `import etude_model`), checkpoint-<step>/
folders, loss_log.jsonl and loss_curve.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm

from utils.loss import causal_lm_loss, logits_cross_entropy
from utils.run_folder import checkpoint_folders, move_aside

from .data import PackedWindows, build_token_cache, split_train_val
from .modeling_etude import EtudeForCausalLM
from .presets import PRESETS, count_parameters, make_config
from .tokenizer import build_etude_tokenizer, check_vocab, load_etude_tokenizer, padded_vocab_size

TRAINING_STATE = "training_state.pt"  # written last into a checkpoint: its presence marks a complete one


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m etude_model.pretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--preset", default="etude-tiny", choices=sorted(PRESETS), help="model size/recipe (default: %(default)s)")
    g.add_argument("--config_override", action="append", default=[], metavar="KEY=VALUE",
                   help="change one EtudeConfig field, e.g. num_hidden_layers=2 (repeatable; VALUE is parsed as JSON)")
    g.add_argument("--tokenizer", default=None, help="tokenizer folder (e.g. from etude_model.train_tokenizer); "
                   "default: the GPT-2 BPE Etude tokenizer. The model vocab is sized to it (padded to 64)")
    g.add_argument("--tiktoken_file", default=None, help="GPT-2 rank file for the default tokenizer "
                   "(default: $ETUDE_TIKTOKEN_FILE, else $DOJO_SHARED_ASSETS/tokenizers/gpt2/gpt2.tiktoken, else "
                   "tiktoken's r50k_base, which downloads)")
    g.add_argument("--gradient_checkpointing", action="store_true", help="recompute activations in backward to save memory")
    g = p.add_argument_group("data")
    g.add_argument("--data", nargs="+", required=True, help=".txt / .jsonl files or folders of them (jsonl: {'text': ...})")
    g.add_argument("--text_split", default="paragraph", choices=["paragraph", "line"],
                   help=".txt documents: blank-line separated paragraphs, or one per line (default: %(default)s)")
    g.add_argument("--cache_dir", default=os.path.expanduser("~/.cache/etude/tokens"),
                   help="where tokenized corpora are cached, keyed by a hash of files+tokenizer (default: %(default)s)")
    g.add_argument("--val_fraction", type=float, default=0.01, help="share of tokens held out for validation (default: %(default)s)")
    g.add_argument("--block_size", type=int, default=None, help="training context length (default: the preset's)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch_size", type=int, default=16, help="sequences per micro-batch (default: %(default)s)")
    g.add_argument("--grad_accum_steps", type=int, default=1, help="micro-batches per optimizer step (default: %(default)s)")
    g.add_argument("--max_steps", type=int, default=1000, help="optimizer steps to train to (default: %(default)s)")
    g.add_argument("--lr", type=float, default=6e-4, help="peak learning rate (default: %(default)s)")
    g.add_argument("--min_lr", type=float, default=None, help="final learning rate of the cosine (default: lr/10)")
    g.add_argument("--warmup_steps", type=int, default=100, help="linear warmup steps (default: %(default)s)")
    g.add_argument("--lr_decay_steps", type=int, default=None, help="step where the cosine reaches min_lr (default: max_steps)")
    g.add_argument("--weight_decay", type=float, default=0.1, help="AdamW decay for 2-D weights only (default: %(default)s)")
    g.add_argument("--beta1", type=float, default=0.9, help="AdamW beta1 (default: %(default)s)")
    g.add_argument("--beta2", type=float, default=0.95, help="AdamW beta2 (default: %(default)s)")
    g.add_argument("--grad_clip", type=float, default=1.0, help="clip the global grad norm to this; 0 = off (default: %(default)s)")
    g.add_argument("--seed", type=int, default=1337, help="seed for init, data order and dropout (default: %(default)s)")
    g = p.add_argument_group("hardware")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default: %(default)s)")
    g.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto = bf16 autocast on CUDA, fp32 elsewhere (default: %(default)s)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (faster on GPU after a warm-up)")
    g.add_argument("--fused_ce", action="store_true", help="CUDA: the training loss by liger-kernel's cross-entropy "
                   "kernel, which writes the logits' gradient over the logits in the forward (no fp32 copy, no "
                   "second pass in the backward): less memory and a faster step; needs liger-kernel. Elsewhere "
                   "torch's cross-entropy (the same math). An MoE preset's load-balancing loss is added either way")
    g.add_argument("--peak_tflops", type=float, default=989.0,
                   help="accelerator peak TFLOP/s for MFU (default: %(default)s = H100 SXM bf16 dense)")
    g = p.add_argument_group("logging and checkpoints")
    g.add_argument("--output_dir", required=True, help="where checkpoints, the final model and logs go")
    g.add_argument("--overwrite_output_dir", action="store_true",
                   help="start afresh in a non-empty output_dir: what it holds is moved to a sibling "
                   "OUTPUT_DIR.replaced-TIME folder, nothing is deleted")
    g.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                   help="continue exactly from the latest checkpoint-<step> in output_dir, or from the given one")
    g.add_argument("--eval_every", type=int, default=200, help="validate every N steps and at the end (default: %(default)s)")
    g.add_argument("--eval_iters", type=int, default=20, help="validation batches per evaluation (default: %(default)s)")
    g.add_argument("--log_every", type=int, default=10, help="log train loss, tokens/s and MFU every N steps (default: %(default)s)")
    g.add_argument("--save_every", type=int, default=1000, help="checkpoint every N steps and at the end (default: %(default)s)")
    g.add_argument("--save_total_limit", type=int, default=2, help="keep only the newest N checkpoint-<step> folders (default: %(default)s)")
    g.add_argument("--no_progress", action="store_true", help="no tqdm progress bar")
    return p


# --------------------------------------------------------------------------- pieces of the loop


def get_lr(step: int, args) -> float:
    """Linear warmup to lr, then cosine decay to min_lr at lr_decay_steps, then flat."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    if step >= args.lr_decay_steps:
        return args.min_lr
    progress = (step - args.warmup_steps) / max(1, args.lr_decay_steps - args.warmup_steps)
    return args.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (args.lr - args.min_lr)


def make_optimizer(model, args, device_type: str) -> torch.optim.AdamW:
    """nanoGPT rule: weight-decay every parameter with >= 2 dims (matmul weights, embeddings);
    never decay biases and norm gains, which only shift/scale and have no 'size' to regularise."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(args.beta1, args.beta2), fused=device_type == "cuda")


def make_loss_fn(model, args, device):
    """(x, y) -> the training step's loss by utils/loss.py's causal_lm_loss (next-token cross-entropy, plus an MoE
    preset's load-balancing term): the model's own, or with --fused_ce liger-kernel's cross-entropy kernel on the
    model's logits (on CUDA; elsewhere torch's, the same math)."""
    backend = "liger" if args.fused_ce else "model"
    if backend == "liger" and device.type != "cuda":
        tqdm.write(f"--fused_ce runs a Triton kernel on CUDA: on {device} torch's cross-entropy (the same math)")
    elif backend == "liger":
        try:
            logits_cross_entropy(device)
        except ImportError as e:
            raise SystemExit(f"--fused_ce needs liger-kernel (pip install -r requirements-gpu.txt): {e}") from e

    def loss_fn(x, y):
        return causal_lm_loss(model, {"input_ids": x, "use_cache": False}, shift_labels=y, backend=backend)
    return loss_fn


def flops_per_token(config, seq_len: int) -> float:
    """PaLM / nanoGPT estimate: 6 flops per (active) weight per token for forward + backward, plus
    12 * layers * d_attn * seq_len for the attention scores. The LM head counts, the embedding lookup
    and learned positions do not."""
    counts = count_parameters(config)
    n = counts["active"] - config.hidden_size * (config.max_position_embeddings
                                                 if config.position_embedding_type == "learned" else 0)
    if not config.tie_word_embeddings:
        n -= config.vocab_size * config.hidden_size  # the input embedding; the separate head stays in
    return 6 * n + 12 * config.num_hidden_layers * config.num_attention_heads * config.head_dim * seq_len


@torch.no_grad()
def evaluate(model, val_tokens, args, device, autocast) -> float:
    loader = PackedWindows(val_tokens, args.block_size, args.batch_size, shuffle=False)
    n_batches = min(args.eval_iters, math.ceil(loader.n_windows / args.batch_size))
    model.eval()
    losses = []
    for _ in range(n_batches):
        x, y = (t.to(device) for t in loader.next_batch())
        with autocast:
            losses.append(model(input_ids=x, shift_labels=y, use_cache=False).loss.item())
    model.train()
    return sum(losses) / len(losses)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out: Path, step: int, model, tokenizer, optimizer, loader, args) -> Path:
    """Write checkpoint-<step>/ in a temp folder first, then rename it into place (a rename is
    atomic), so a crash mid-save never leaves a half-written checkpoint that --resume would pick."""
    final, tmp = out / f"checkpoint-{step}", out / f".tmp-checkpoint-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "data": loader.state_dict(),
                "rng": rng_state(), "args": {k: v for k, v in vars(args).items() if k != "data"}},
               tmp / TRAINING_STATE)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in checkpoint_folders(out, TRAINING_STATE)[:-args.save_total_limit] if args.save_total_limit > 0 else []:
        shutil.rmtree(old[1])
    return final


def export_final(out: Path, model, tokenizer) -> None:
    """The final model + tokenizer at the top of output_dir, each file swapped in atomically."""
    tmp = out / ".tmp-final"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    for f in tmp.iterdir():
        os.replace(f, out / f.name)
    tmp.rmdir()


def plot_curves(log_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["train_loss"]) for r in rows if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), alpha=0.4, label="train loss")
    if val:
        ax.plot(*zip(*val), marker="o", label="validation loss")
    ax.set(xlabel="optimizer step", ylabel="cross-entropy (nats/token)", title="Etude pretraining")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    out = Path(args.output_dir)
    existing = sorted(out.iterdir()) if out.is_dir() and not args.resume else []
    if existing and not args.overwrite_output_dir:
        raise SystemExit(f"output_dir {out} is not empty: pass --resume to continue or --overwrite_output_dir")
    if existing:
        tqdm.write(move_aside(out, existing))
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "loss_log.jsonl"

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    use_bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    # Resume: the checkpoint's model, config and tokenizer win over --preset/--tokenizer.
    state, ckpt = None, None
    if args.resume:
        found = checkpoint_folders(out, TRAINING_STATE)
        ckpt = Path(args.resume) if args.resume != "latest" else (found[-1][1] if found else None)
        if ckpt is None or not (ckpt / TRAINING_STATE).exists():
            raise SystemExit(f"--resume: no checkpoint with {TRAINING_STATE} found in {out}")
        state = torch.load(ckpt / TRAINING_STATE, map_location="cpu", weights_only=True)
        args.block_size = args.block_size or state["args"]["block_size"]  # same windows as before

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    if ckpt is not None:
        tokenizer = load_etude_tokenizer(ckpt)
        model = EtudeForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
        config = model.config
    else:
        tokenizer = load_etude_tokenizer(args.tokenizer) if args.tokenizer else build_etude_tokenizer(args.tiktoken_file)
        overrides = {}
        for item in args.config_override:
            key, _, value = item.partition("=")
            try:
                overrides[key] = json.loads(value)
            except json.JSONDecodeError:
                overrides[key] = value
        defaults = {"vocab_size": padded_vocab_size(len(tokenizer)), "eos_token_id": tokenizer.eos_token_id,
                    "pad_token_id": tokenizer.pad_token_id}
        config = make_config(args.preset, **{**defaults, **overrides, "training_stage": "pretrain"})
        if args.block_size and args.block_size > config.max_position_embeddings:
            config.max_position_embeddings = args.block_size
        model = EtudeForCausalLM(config)
    check_vocab(config, tokenizer)
    args.block_size = args.block_size or config.max_position_embeddings
    if args.block_size > config.max_position_embeddings:
        raise SystemExit(f"--block_size {args.block_size} > the checkpoint's max_position_embeddings")
    args.min_lr = args.lr / 10 if args.min_lr is None else args.min_lr
    args.lr_decay_steps = args.lr_decay_steps or args.max_steps
    if args.warmup_steps > args.max_steps:
        print(f"warning: --warmup_steps {args.warmup_steps} exceeds --max_steps {args.max_steps}: the learning rate "
              f"stops at {get_lr(args.max_steps - 1, args):.2e}, never reaching --lr {args.lr:.2e}", file=sys.stderr)
    model.to(device).train()
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()  # a.k.a. gradient checkpointing

    tokens, meta = build_token_cache(args.data, tokenizer, args.cache_dir, args.text_split, log=tqdm.write)
    train_tokens, val_tokens = split_train_val(tokens, args.val_fraction, args.block_size)
    loader = PackedWindows(train_tokens, args.block_size, args.batch_size, seed=args.seed)
    optimizer = make_optimizer(model, args, device.type)
    step = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        loader.load_state_dict(state["data"])
        set_rng_state(state["rng"])
        step = state["step"]
        if log_path.exists():  # forget log lines written after the checkpoint we resume from
            keep = [l for l in log_path.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= step]
            log_path.write_text("".join(l + "\n" for l in keep))

    counts = count_parameters(config)
    tokens_per_step = args.batch_size * args.grad_accum_steps * args.block_size
    fpt = flops_per_token(config, args.block_size)
    tqdm.write(f"Etude {args.preset if ckpt is None else ckpt}: {counts['total'] / 1e6:.2f}M parameters "
               f"({counts['non_embedding'] / 1e6:.2f}M non-embedding), vocab {config.vocab_size}, device {device}, "
               f"{'bf16 autocast' if use_bf16 else 'fp32'}\ncorpus: {meta['num_tokens']:,} tokens "
               f"({len(train_tokens):,} train / {len(val_tokens):,} val), {tokens_per_step:,} tokens per step")
    step_model = torch.compile(model) if args.compile else model
    loss_fn = make_loss_fn(step_model, args, device)

    def log(record: dict):
        with open(log_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    bar = tqdm(total=args.max_steps, initial=step, disable=args.no_progress, desc="pretrain", dynamic_ncols=True)
    t0, tokens_seen, last = time.perf_counter(), 0, {}
    while step < args.max_steps:
        lr = get_lr(step, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        for _ in range(args.grad_accum_steps):
            x, y = (t.to(device, non_blocking=True) for t in loader.next_batch())
            with autocast:
                loss = loss_fn(x, y)
            (loss / args.grad_accum_steps).backward()
            loss_sum += loss.detach()  # no .item() here: a host sync per micro-batch stalls the GPU queue
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip if args.grad_clip > 0 else float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += tokens_per_step
        bar.update(1)
        if step % args.log_every == 0 or step == args.max_steps:
            train_loss = loss_sum.item() / args.grad_accum_steps
            dt = time.perf_counter() - t0
            tps = tokens_seen / dt
            last = {"step": step, "train_loss": train_loss, "lr": lr, "grad_norm": float(grad_norm),
                    "tokens_per_sec": tps}
            shown = dict(loss=f"{train_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
            if device.type == "cuda":  # peak_tflops is an accelerator's: against a CPU the ratio means nothing
                last["mfu"] = tps * fpt / (args.peak_tflops * 1e12)
                shown["mfu"] = f"{100 * last['mfu']:.1f}%"
            log(last)
            bar.set_postfix(**shown)
            t0, tokens_seen = time.perf_counter(), 0
        if step % args.eval_every == 0 or step == args.max_steps:
            val_loss = evaluate(step_model, val_tokens, args, device, autocast) if len(val_tokens) else float("nan")
            log({"step": step, "val_loss": val_loss})
            last["val_loss"] = val_loss
            train_loss = loss_sum.item() / args.grad_accum_steps
            tqdm.write(f"step {step}: train loss {train_loss:.4f}, val loss {val_loss:.4f}")
            plot_curves(log_path, out / "loss_curve.png")
            t0, tokens_seen = time.perf_counter(), 0  # do not count evaluation time in tokens/s
        if step % args.save_every == 0 or step == args.max_steps:
            save_checkpoint(out, step, model, tokenizer, optimizer, loader, args)
            t0, tokens_seen = time.perf_counter(), 0
    bar.close()
    export_final(out, model, tokenizer)
    tqdm.write(f"done: final model in {out}")
    return last


if __name__ == "__main__":
    main()
