"""Our training path against the peer stacks, on the same models and data, in one process tree.

    python bench/bench.py --out OUT [--peer_bench ../shared/bench/peer_bench.py] [--model 0.5b] [--steps 30]

The model (random-init Qwen2.5-shaped), the synthetic SFT rows, the token meter, the step timer and the MFU formula
are peer_bench.py's own functions, imported from it, so both sides are measured by the same code. Our rows build
the run the way main_train.py does: TrainArgs -> apply_peft -> build_trainer (our collator, our callbacks). Each
configuration runs in its own subprocess (clean CUDA memory statistics). The peers are run through peer_bench.py's
own orchestrator in the same call, and one table of all rows is printed last.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# name -> our TrainArgs fields on top of the common LoRA r16/a32 all-linear recipe of the peers
OURS = {
    "dojo_lora_padded": dict(padding_free=False),
    "dojo_lora_padding_free": dict(padding_free=True),
    "dojo_lora_padding_free_liger": dict(padding_free=True, use_liger_kernel=True),
}


def load_peer_bench(path: str):
    spec = importlib.util.spec_from_file_location("peer_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_ours(name: str, a) -> dict:
    import torch

    from train_args.base import TrainArgs
    from utils.model import apply_peft
    from utils.trainer import build_trainer

    pb = load_peer_bench(a.peer_bench)
    dims = pb.MODEL_DIMS[a.model]
    total = a.warmup + a.steps
    rows, _ = pb.make_rows(total * a.batch + 32, a.seed)
    tok = pb.build_tokenizer()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    args = TrainArgs(
        output_dir=tempfile.mkdtemp(prefix=name), overwrite_output_dir=True, per_device_train_batch_size=a.batch,
        gradient_accumulation_steps=1, max_steps=total, learning_rate=2e-4, lr_scheduler_type="constant",
        warmup_steps=0, bf16=dev == "cuda", use_cpu=dev == "cpu", train_mode="lora", lora_rank=16, lora_alpha=32,
        lora_dropout=0.0, save_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
        seed=a.seed, data_seed=a.seed, **OURS[name])
    model = apply_peft(pb.build_bf16_model(dims, dev), args)
    timer = pb.make_timer_callback(a.warmup, a.steps)
    trainer = build_trainer(model, args, tok, pb.ListDataset(rows), None, callbacks=[timer])
    meter = pb.Meter()
    pb.instrument(trainer, meter)
    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    win = meter.values()[a.warmup:total]
    dt = timer.t1 - timer.t0
    T, S2 = sum(b["real"] for b in win), sum(b["sumsq"] for b in win)
    n_lora = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    flops = 4.0 * pb.matmul_params(dims) * T + 6.0 * n_lora * T + 6.0 * dims["num_hidden_layers"] * \
        dims["hidden_size"] * S2  # peer_bench's LoRA formula
    losses = [float(x) for x in meter.losses]
    return dict(config=name, status="ok", tokens_per_s=round(T / dt, 1), step_s=round(dt / a.steps, 4),
                peak_alloc_gb=round(torch.cuda.max_memory_allocated() / 1e9, 3) if dev == "cuda" else None,
                model_tflops_per_s=round(flops / dt / 1e12, 2), loss_first=round(losses[0], 4),
                loss_last5=round(sum(losses[total - 5:total]) / 5, 4))


def table(results: list[dict], ceiling_tflops: float | None) -> str:
    lines = ["| config | tokens/s | step s | peak alloc GB | MFU | loss first -> last5 |", "|---|---|---|---|---|---|"]
    for r in results:
        if r.get("status") != "ok":
            lines.append(f"| {r['config']} | failed: {str(r.get('error'))[:80]} | | | | |")
            continue
        mfu = f"{100 * r['model_tflops_per_s'] / ceiling_tflops:.1f}%" if ceiling_tflops else "-"
        lines.append(f"| {r['config']} | {r['tokens_per_s']:.0f} | {r['step_s']} | {r.get('peak_alloc_gb')} | {mfu} "
                     f"| {r.get('loss_first')} -> {r.get('loss_last5')} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench_out")
    p.add_argument("--peer_bench", default=str(REPO.parent / "shared" / "bench" / "peer_bench.py"))
    p.add_argument("--model", default="0.5b", help="peer_bench MODEL_DIMS key (tiny for a CPU plumbing test)")
    p.add_argument("--ours", default=",".join(OURS), help="comma list of our configs")
    p.add_argument("--peers", default="hf_lora,trl_lora_packed", help="peer_bench configs ('' for none)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=8, help="samples per optimizer step, as the peers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.worker:
        try:
            res = run_ours(a.worker, a)
        except Exception as err:  # noqa: BLE001  (a failed row is reported, the others still run)
            res = dict(config=a.worker, status="failed", error=repr(err))
        print("RESULT_JSON " + json.dumps(res), flush=True)
        return
    results = []
    for name in filter(None, a.ours.split(",")):
        t0 = time.time()
        proc = subprocess.run([sys.executable, __file__, "--worker", name, *sys.argv[1:]], capture_output=True,
                              text=True)
        (out / f"{name}.log").write_text(proc.stdout + proc.stderr)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT_JSON ")]
        results.append(json.loads(line[-1][12:]) if line else dict(config=name, status="failed",
                                                                   error=proc.stderr[-300:]))
        print(f"{name}: {results[-1].get('tokens_per_s')} tokens/s ({time.time() - t0:.0f} s)", flush=True)
    ceiling = None
    if a.peers:
        subprocess.run([sys.executable, a.peer_bench, "--out", str(out / "peers"), "--configs", a.peers,
                        "--steps", str(a.steps), "--warmup", str(a.warmup)], check=False)
        peers = json.loads((out / "peers" / "peer_results.json").read_text())["results"]
        ceiling = next((r.get("tflops_median") for r in peers if r.get("config") == "matmul_bf16"), None)
        results = [dict(r, config="peer: " + r["config"]) for r in peers
                   if r.get("config") not in ("env", "matmul_bf16")] + results
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(table(results, ceiling))


if __name__ == "__main__":
    main()
