"""Etude pretraining throughput at nanoGPT's GPT-2-124M configuration, variant against variant, in one process.

    python bench/etude_bench.py --variants default,coord [--batch 60 --accum 1] [--profile 20]

The issue's anchor is karpathy/nanoGPT's train.py unmodified (12 layers x 768, 12 heads, block 1024, batch 12 x
accumulation 5 = 61,440 tokens per step, bf16 autocast, compile, random tokens). This script runs the same model
through etude_model's own pieces (EtudeForCausalLM, make_optimizer, make_loss_fn, flops_per_token) and the same loop as
etude_model/pretrain.py (forward + loss, backward, clip at 1.0, fused AdamW), on random tokens, and measures the
bf16 matmul ceiling in the same process with peer_bench.py's own function. The headline figure of a release comes
from `python -m etude_model.pretrain` itself (bench/gpu_etude.sh); this script is for finding where the time goes:
`--profile` prints the GPU kernels that took the most time per step.
"""
from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parent.parent
from bench import load_peer_bench, top_kernels  # noqa: E402  (bench/bench.py: this folder is first on sys.path)
from etude_model import EtudeForCausalLM, make_config  # noqa: E402
from etude_model.pretrain import flops_per_token, make_loss_fn, make_optimizer  # noqa: E402

# GPT-2 124M as nanoGPT's train.py builds it: learned positions, LayerNorm, GELU, tied head, no bias, 50304 rows.
GPT2_124M = dict(num_hidden_layers=12, max_position_embeddings=1024, tie_word_embeddings=True, bias=False,
                 vocab_size=50304)
# name -> (SDPA backend or None for torch's choice, torch.compile mode, inductor options, pretrain's --fused_ce,
# EtudeConfig.autocast_residual). Variants that rewrote the model or the loss (one matmul for q/k/v, a scatter-free
# loss, utils/loss.py's chunked head + loss) were measured and removed: bench/README.md, 2026-12-01.
VARIANTS = {
    "default": (None, "default", {}, False, False),
    "cudnn": ("CUDNN_ATTENTION", "default", {}, False, False),
    "flash": ("FLASH_ATTENTION", "default", {}, False, False),
    "coord": (None, "default", {"coordinate_descent_tuning": True}, False, False),
    "autotune": (None, "max-autotune-no-cudagraphs", {}, False, False),
    "liger_ce": (None, "default", {}, True, False),
    "bf16_residual": (None, "default", {}, False, True),
    "liger_ce_bf16_residual": (None, "default", {}, True, True),
}


def run_variant(name: str, a) -> dict:
    backend, mode, inductor_options, fused_ce, autocast_residual = VARIANTS[name]
    torch._dynamo.reset()
    torch.manual_seed(a.seed)
    config = make_config("etude-v0.1", **GPT2_124M, autocast_residual=autocast_residual)
    model = EtudeForCausalLM(config).to(a.device).train()
    opt_args = SimpleNamespace(lr=6e-4, beta1=0.9, beta2=0.95, weight_decay=0.1)
    optimizer = make_optimizer(model, opt_args, a.device)
    step_model = torch.compile(model, mode=mode)
    loss_fn = make_loss_fn(step_model, SimpleNamespace(fused_ce=fused_ce), torch.device(a.device))
    if backend:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        attention = sdpa_kernel(getattr(SDPBackend, backend))
    else:
        attention = nullcontext()
    T, gen = a.block_size or config.max_position_embeddings, torch.Generator(device=a.device).manual_seed(a.seed)

    def step():
        loss_sum = torch.zeros((), device=a.device)
        for _ in range(a.accum):
            tokens = torch.randint(0, config.vocab_size, (a.batch, T + 1), device=a.device, generator=gen)
            with torch.autocast(a.device, dtype=torch.bfloat16):
                loss = loss_fn(tokens[:, :-1], tokens[:, 1:])
            (loss / a.accum).backward()
            loss_sum += loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss_sum / a.accum

    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    with attention, torch._inductor.config.patch(inductor_options):  # compiled lazily, in the first step
        t0 = time.perf_counter()
        for _ in range(a.warmup):
            step()
        sync()
        warmup_s = time.perf_counter() - t0
        if a.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        losses = [step() for _ in range(a.steps)]
        sync()
        step_s = (time.perf_counter() - t0) / a.steps
        kernels, busy = [], None
        if a.profile:
            from torch.profiler import ProfilerActivity, profile
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(2):
                    step()
                sync()
            kernels = top_kernels(prof, 2, n=a.profile)
            busy = sum(e.self_device_time_total for e in prof.key_averages()) / 1e6 / (2 * step_s)
    tokens_per_s = a.batch * a.accum * T / step_s
    return dict(variant=name, batch=a.batch, accum=a.accum, step_s=round(step_s, 4), warmup_s=round(warmup_s, 1),
                tokens_per_s=round(tokens_per_s), model_tflops_per_s=tokens_per_s * flops_per_token(config, T) / 1e12,
                peak_alloc_gb=round(torch.cuda.max_memory_allocated() / 1e9, 2) if a.device == "cuda" else None,
                gpu_busy=busy and round(busy, 3), losses=[round(float(l), 4) for l in losses], top_kernels=kernels)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="default", help=f"comma list of {sorted(VARIANTS)}")
    p.add_argument("--batch", type=int, default=60, help="sequences per micro-batch")
    p.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--block_size", type=int, default=None, help="tokens per sequence (default: 1024, nanoGPT's)")
    p.add_argument("--device", default="cuda", help="cuda; cpu only checks that the script runs")
    p.add_argument("--profile", type=int, default=0, help="print the N GPU kernels that took most time per step")
    p.add_argument("--peer_bench", default=str(REPO / ".." / "shared" / "bench" / "peer_bench.py"))
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    a = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if a.device == "cuda":
        ceiling = load_peer_bench(a.peer_bench).run_matmul(SimpleNamespace(matmul_n=8192, matmul_reps=50))
    else:
        ceiling = dict(gpu_name="cpu", tflops_median=1.0)
    print(f"{ceiling['gpu_name']}, torch {torch.__version__}: bf16 matmul ceiling {ceiling['tflops_median']} TFLOP/s")
    rows = []
    for name in a.variants.split(","):
        try:
            row = run_variant(name, a)
        except (Exception, SystemExit) as e:  # noqa: BLE001  (one failing variant must not lose the others' rows)
            row = dict(variant=name, error=f"{type(e).__name__}: {e}"[:300])
        row["mfu"] = round(row["model_tflops_per_s"] / ceiling["tflops_median"], 4) if "error" not in row else None
        rows.append(row)
        print(json.dumps(row), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(dict(ceiling=ceiling, rows=rows), indent=1))
    print(f"\n| variant | micro-batch x accum | tokens/s | MFU vs {ceiling['tflops_median']} | peak GB | loss last |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['variant']} | | {r['error'][:60]} | | | |")
            continue
        print(f"| {r['variant']} | {r['batch']} x {r['accum']} | {r['tokens_per_s']:,} | {100 * r['mfu']:.1f}% "
              f"| {r['peak_alloc_gb']} | {r['losses'][-1]} |")


if __name__ == "__main__":
    main()
