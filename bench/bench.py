"""Our training path against the peer stacks, on the same models and data, in one process tree.

    python bench/bench.py --out OUT [--peer_bench ../shared/bench/peer_bench.py] [--model 0.5b] [--steps 30]

The model (random-init Qwen2.5-shaped), the synthetic SFT rows, the token meter, the step timer and the MFU formula
are peer_bench.py's own functions, imported from it, so both sides are measured by the same code. Each of our rows
is a named step plan: TrainArgs overrides (OURS) that utils/step_plan.py resolves into a collator, a loss backend and a
step runner, printed in the row's log. The run is built the way main_train.py builds it: TrainArgs -> apply_peft ->
build_trainer (the plan's collator and step, our callbacks), and measured through the trainer's hooks and
callbacks. Each configuration runs in its own subprocess (clean CUDA memory statistics). The peers are run
through peer_bench.py's own orchestrator in the same call, and one table of all rows is printed last.
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
import memory_peak  # noqa: E402  (bench/memory_peak.py, beside this file)

# name -> our TrainArgs fields on top of the common LoRA r16/a32 all-linear recipe of the peers; "model" picks
# peer_bench's MODEL_DIMS and "batch" overrides --batch (the QLoRA peer runs 4 samples per step).
FAST = dict(padding_free=True, compile_layers=True, optim="adamw_torch_fused")
LIGER_LOSS_ONLY = dict(use_liger_kernel=True, liger_kernel_config={
    "rope": False, "rms_norm": False, "swiglu": False, "cross_entropy": False, "fused_linear_cross_entropy": True})
OURS = {
    "dojo_lora_padded": dict(padding_free=False),
    "dojo_lora_padding_free": dict(padding_free=True),
    "dojo_lora_padding_free_liger": dict(padding_free=True, use_liger_kernel=True),
    "dojo_lora_fast": dict(FAST),
    "dojo_lora_fast_liger": dict(FAST, **LIGER_LOSS_ONLY),
    "dojo_lora_fast_liger_all": dict(FAST, use_liger_kernel=True),
    "dojo_lora_fast_liger_nockpt": dict(FAST, **LIGER_LOSS_ONLY, activation_checkpointing=False),
    "dojo_lora_fast_nockpt": dict(FAST, activation_checkpointing=False),
    "dojo_dora_fast_liger": dict(FAST, **LIGER_LOSS_ONLY, use_dora=True),
    "dojo_full_fast_liger": dict(FAST, **LIGER_LOSS_ONLY, train_mode="full", learning_rate=2e-5),
    "dojo_lora7b_fast_liger": dict(FAST, **LIGER_LOSS_ONLY, model="7b"),
    "dojo_qlora7b_fast_liger": dict(FAST, **LIGER_LOSS_ONLY, model="7b", train_mode="qlora", batch=4),
}
# varlen attention + chunked loss + CUDA graphs over bucketed rows (utils/attention.py, loss.py, cuda_graphs.py)
GRAPHS = dict(padding_free=True, attn_implementation="varlen", chunked_loss=True, cuda_graphs=True,
              optim="adamw_torch_fused")
OURS.update({
    "dojo_lora_graphs": dict(GRAPHS, compile_layers=True),
    "dojo_lora_graphs_ga2": dict(GRAPHS, compile_layers=True, accumulate=2),  # 2 micro-batches of 4 samples
    "dojo_lora_graphs_blocking": dict(GRAPHS, compile_layers=True, accelerator_config={"non_blocking": False}),
    "dojo_lora7b_graphs_ga2": dict(GRAPHS, compile_layers=True, model="7b", accumulate=2),
    # the same 8 samples per micro-batch, run in pieces of at most N tokens (peak memory set by N; each row's
    # predicted and measured peak are in its results)
    "dojo_lora_graphs_cap3584": dict(GRAPHS, compile_layers=True, micro_batch_max_tokens=3584),
    "dojo_lora_graphs_cap3072": dict(GRAPHS, compile_layers=True, micro_batch_max_tokens=3072),
    "dojo_lora_graphs_cap2560": dict(GRAPHS, compile_layers=True, micro_batch_max_tokens=2560),
    "dojo_lora_graphs_cap2048": dict(GRAPHS, compile_layers=True, micro_batch_max_tokens=2048),
    "dojo_lora_graphs_cap4096": dict(GRAPHS, compile_layers=True, micro_batch_max_tokens=4096),  # median 800
    "dojo_lora7b_graphs_cap3072": dict(GRAPHS, compile_layers=True, model="7b", micro_batch_max_tokens=3072),
    "dojo_lora7b_graphs_cap2560": dict(GRAPHS, compile_layers=True, model="7b", micro_batch_max_tokens=2560),
    "dojo_lora_graphs_eager": dict(GRAPHS),
    "dojo_lora_chunked": dict(GRAPHS, compile_layers=True, cuda_graphs=False),
    "dojo_lora_graphs_nockpt": dict(GRAPHS, compile_layers=True, activation_checkpointing=False),
    # transformers' selective checkpointing: layers 0, 2, 4, ... checkpointed, the others keep their activations
    "dojo_lora_graphs_every2": dict(GRAPHS, compile_layers=True, activation_checkpointing_kwargs={
        "use_reentrant": False, "every_n_layers": 2}),
    "dojo_dora_graphs": dict(GRAPHS, use_dora=True, compile_layers=True),
    "dojo_dora_graphs_factored": dict(GRAPHS, use_dora=True, compile_layers=True, factored_dora_norm=True),
    # fused_lora, a memory switch: the adapter added in the B matmul (addmm); DoRA's scale once on the sum
    "dojo_lora_graphs_fused": dict(GRAPHS, compile_layers=True, fused_lora=True),
    "dojo_dora_graphs_fused": dict(GRAPHS, use_dora=True, compile_layers=True, factored_dora_norm=True,
                                   fused_lora=True),
    # candidates for unsloth's peak memory: pieces of 2,048 tokens at 0.5B, 4-bit 7B
    "dojo_lora_graphs_cap2048_fused": dict(GRAPHS, compile_layers=True, micro_batch_max_tokens=2048, fused_lora=True),
    "dojo_qlora7b_graphs_compiled_fused": dict(GRAPHS, compile_layers=True, model="7b", train_mode="qlora", batch=4,
                                               fused_lora=True),
    # offload_checkpoints (the checkpointed layers' inputs in host memory): without graphs against dojo_lora_chunked,
    # with them against cap2048_fused, for its cost; 4-bit 7B in pieces, the candidate for unsloth's QLoRA peak
    "dojo_lora_chunked_offload": dict(GRAPHS, compile_layers=True, cuda_graphs=False, offload_checkpoints=True),
    "dojo_lora_graphs_cap2048_fused_offload": dict(GRAPHS, compile_layers=True, micro_batch_max_tokens=2048,
                                                   fused_lora=True, offload_checkpoints=True),
    "dojo_qlora7b_graphs_offload_cap2048_fused": dict(GRAPHS, compile_layers=True, model="7b", train_mode="qlora",
                                                      batch=4, micro_batch_max_tokens=2048, fused_lora=True,
                                                      offload_checkpoints=True),
    # the same, every piece padded to 2,048 (cuda_graph_bucket = the cap): one graph instead of one per piece
    # length, so the peak is one capture's, not what successive captures add in the shared pool
    "dojo_lora_graphs_cap2048_b2048_fused_offload": dict(GRAPHS, compile_layers=True, micro_batch_max_tokens=2048,
                                                         cuda_graph_bucket=2048, fused_lora=True,
                                                         offload_checkpoints=True),
    "dojo_qlora7b_graphs_offload_cap2048_b2048_fused": dict(GRAPHS, compile_layers=True, model="7b",
                                                            train_mode="qlora", batch=4, micro_batch_max_tokens=2048,
                                                            cuda_graph_bucket=2048, fused_lora=True,
                                                            offload_checkpoints=True),
    "dojo_dora_graphs_nockpt": dict(GRAPHS, use_dora=True, compile_layers=True, activation_checkpointing=False),
    "dojo_full_graphs": dict(GRAPHS, compile_layers=True, train_mode="full", learning_rate=2e-5),
    "dojo_lora7b_graphs": dict(GRAPHS, compile_layers=True, model="7b"),
    # memory_budget_gb picks the checkpointing (fewest recomputed layers whose whole micro-batch fits), as a user's
    # run does: at 1.5B, 40 GB holds every activation; at 7B, 70 GB checkpoints one layer in 3 (--dry_run)
    "dojo_lora_graphs_budget40": dict(GRAPHS, compile_layers=True, memory_budget_gb=40),
    "dojo_lora7b_graphs_budget70": dict(GRAPHS, compile_layers=True, model="7b", memory_budget_gb=70),
    "dojo_full_graphs_budget60": dict(GRAPHS, compile_layers=True, train_mode="full", learning_rate=2e-5,
                                      memory_budget_gb=60),
    # one sample per step: the long-context rows (--len_median 16384 / 32768 --len_sigma 0) against the same at 2,048
    "dojo_lora7b_graphs_b1": dict(GRAPHS, compile_layers=True, model="7b", batch=1),
    "dojo_qlora7b_graphs": dict(GRAPHS, model="7b", train_mode="qlora", batch=4),
    # the same with compiled layers (bitsandbytes' 4-bit ops trace without graph breaks: a CPU test)
    "dojo_qlora7b_graphs_compiled": dict(GRAPHS, compile_layers=True, model="7b", train_mode="qlora", batch=4),
})
DEFAULT_OURS = "dojo_lora_graphs,dojo_dora_graphs_factored,dojo_full_graphs"


def load_peer_bench(path: str):
    spec = importlib.util.spec_from_file_location("peer_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def host_profile_callback(start: int, stop: int):
    """cProfile over the timed steps only (after compilation): where a step's host time goes."""
    import cProfile
    import io
    import pstats

    from transformers import TrainerCallback

    class HostProfile(TrainerCallback):
        def __init__(self):
            self.prof = cProfile.Profile()

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == start:
                self.prof.enable()

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == stop:
                self.prof.disable()

        def report(self) -> str:
            buf = io.StringIO()
            for key, n in (("tottime", 35), ("cumulative", 70)):
                pstats.Stats(self.prof, stream=buf).sort_stats(key).print_stats(n)
            return buf.getvalue()

    return HostProfile()


def instrument(trainer, meter):
    """peer_bench's instrument, through the trainer's micro-batch hook, except that a bucketed row's filler sample
    is not counted as data: its real tokens end at the last sample boundary (counted on the GPU, no host sync, as
    peer_bench's Meter)."""
    import torch
    meter.fed = []  # tokens per forward: the micro-batch's row, or the longest of its pieces

    def record(inputs, loss):
        meter.fed.append(max(b["input_ids"].numel() for b in inputs.get("pieces", [inputs])))
        if trainer.plan.collator == "bucketed" and "pieces" not in inputs:  # a split one keeps its unpadded row
            pos, cu = inputs["position_ids"], inputs["cu_seq_lens_q"]
            real = torch.arange(pos.shape[-1], device=pos.device) < cu[-2]
            meter.batches.append(dict(real=real.sum(), nseq=((pos[0] == 0) & real).sum(),
                                      sumsq=((2 * pos[0].long() + 1) * real).sum(),
                                      loss_tok=(inputs["labels"] != -100).sum(),
                                      padded=torch.tensor(pos.numel())))
        else:
            meter.record(inputs)
        meter.losses.append(loss.detach().float())

    trainer.micro_batch_hooks.append(record)


def row_fields(name: str, a, dev: str) -> tuple[dict, str, int, int]:
    """Bench row `name` as (TrainArgs fields, peer_bench model key, samples per optimizer step, micro-batches per
    optimizer step): the peers' common LoRA recipe, then the row's overrides."""
    spec = dict(OURS[name])
    model_key, batch = spec.pop("model", a.model), spec.pop("batch", a.batch)
    accumulate = spec.pop("accumulate", 1)  # the same samples per optimizer step, in this many micro-batches
    warmup, steps = (a.warmup_7b, a.steps_7b) if model_key == "7b" else (a.warmup, a.steps)
    fields = dict(
        output_dir=tempfile.mkdtemp(prefix=name), overwrite_output_dir=True,
        per_device_train_batch_size=batch // accumulate, gradient_accumulation_steps=accumulate,
        max_steps=warmup + steps + a.profile_steps, learning_rate=2e-4,
        lr_scheduler_type="constant", warmup_steps=0, bf16=dev == "cuda", use_cpu=dev == "cpu", train_mode="lora",
        lora_rank=16, lora_alpha=32, lora_dropout=0.0, save_strategy="no", logging_strategy="no", report_to="none",
        disable_tqdm=True, seed=a.seed, data_seed=a.seed)
    fields.update(spec)
    if dev == "cpu":  # CUDA-only switches
        for key in ("optim", "use_liger_kernel", "liger_kernel_config"):
            fields.pop(key, None)
    return fields, model_key, batch, accumulate


def synthetic_rows(pb, a, n: int) -> list[dict]:
    """peer_bench's synthetic SFT rows in the length distribution the bench was given (the peers draw the same,
    through the --len-median ... flags that run_peer_rows passes on)."""
    rows, _ = pb.make_rows(n, a.seed, median=a.len_median, sigma=a.len_sigma, min_len=a.min_len, max_len=a.max_len)
    return rows


def length_flags(a) -> list[str]:
    """The length distribution as peer_bench's worker flags."""
    return ["--len-median", str(a.len_median), "--len-sigma", str(a.len_sigma), "--min-len", str(a.min_len),
            "--max-len", str(a.max_len)]


def run_ours(name: str, a) -> dict:
    import torch

    from train_args.base import TrainArgs
    from utils.memory import estimate_peak, meta_model, prefer_expandable_segments
    from utils.model import apply_peft, compile_layers, prepare_quantized
    from utils.trainer import build_trainer

    print(prefer_expandable_segments() or "CUDA allocator: as configured (or no GPU)", flush=True)  # as main_train.py

    pb = load_peer_bench(a.peer_bench)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    fields, model_key, batch, accumulate = row_fields(name, a, dev)
    warmup, steps = (a.warmup_7b, a.steps_7b) if model_key == "7b" else (a.warmup, a.steps)
    dims = pb.MODEL_DIMS[model_key]
    total = warmup + steps
    rows = synthetic_rows(pb, a, (total + a.profile_steps + 4) * batch)  # peer_bench's count: the same rows
    tok = pb.build_tokenizer()
    args = TrainArgs(**fields)
    from transformers import set_seed
    set_seed(a.seed)  # as peer_bench's workers: every row starts from the same random model
    # peer_bench's random model (NF4 + double quant for QLoRA), then our build_model's QLoRA step
    model = pb.build_qlora_model(dims) if args.train_mode == "qlora" else pb.build_bf16_model(dims, dev)
    model.set_attn_implementation(args.attn_implementation)  # peer_bench builds sdpa models
    model = compile_layers(apply_peft(prepare_quantized(model, args), args), args)
    timer = pb.make_timer_callback(warmup, steps, a.profile_steps)
    host_profile = host_profile_callback(warmup, total) if a.cprofile else None
    trainer = build_trainer(model, args, tok, pb.ListDataset(rows), None,
                            callbacks=[timer] + ([host_profile] if host_profile else []))
    print(f"plan {name}: {trainer.plan.describe()}", flush=True)
    meter = pb.Meter()
    instrument(trainer, meter)
    captures = watch_captures(trainer, meter) if dev == "cuda" else []
    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    baseline = memory_peak.start() if a.memory_peak and dev == "cuda" else None
    trainer.train()
    if baseline is not None:
        print(memory_peak.report(baseline))
    if host_profile:
        print(host_profile.report())
    batches = meter.values()
    win = batches[warmup * accumulate:total * accumulate]  # micro-batches of the timed optimizer steps
    dt = timer.t1 - timer.t0
    T, S2 = sum(b["real"] for b in win), sum(b["sumsq"] for b in win)
    n_train = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    attention = 6.0 * dims["num_hidden_layers"] * dims["hidden_size"] * S2
    if args.train_mode == "full":  # peer_bench's formulas
        flops = 6.0 * pb.matmul_params(dims) * T + attention
    else:
        flops = 4.0 * pb.matmul_params(dims) * T + 6.0 * n_train * T + attention
    micro = [float(x) for x in meter.losses]  # each micro-batch's share of its step's loss (num_items scaling)
    losses = [sum(micro[i:i + accumulate]) for i in range(0, len(micro), accumulate)]
    fed = max(meter.fed)  # the most tokens one forward saw (a micro-batch, or its longest piece)
    rows_fed = 1 if trainer.plan.padding_free else batch // accumulate
    predicted = estimate_peak(meta_model(args, pb.qwen2_config(dims)), args, fed, fed // rows_fed, rows_fed,
                              trainer.plan)
    res = dict(config=name, status="ok", model=model_key, batch=batch, tokens_per_s=round(T / dt, 1),
               step_s=round(dt / steps, 4),
               peak_alloc_gb=round(torch.cuda.max_memory_allocated() / 1e9, 3) if dev == "cuda" else None,
               model_tflops_per_s=round(flops / dt / 1e12, 2), loss_first=round(losses[0], 4),
               loss_last5=round(sum(losses[total - 5:total]) / 5, 4), losses=[round(x, 4) for x in losses[:total]],
               peak_reserved_gb=round(torch.cuda.max_memory_reserved() / 1e9, 3) if dev == "cuda" else None,
               graphs=len(trainer._graphed.graphs) if trainer._graphed else None,
               max_batch_tokens=fed, predicted_peak_gb=round(predicted["total"], 3),
               predicted_parts={k: round(v, 3) for k, v in predicted.items()}, fields=OURS[name],
               plan=trainer.plan.to_dict(),
               dataset=dict(len_median=a.len_median, len_sigma=a.len_sigma, min_len=a.min_len, max_len=a.max_len))
    if a.profile_steps:
        res.update(timer.profile_summary())
        if timer.prof is not None:
            res["top_kernels"] = top_kernels(timer.prof, a.profile_steps, a.top_kernels)
    res["captures"] = captures
    # a capture (its eager warm-up runs included) happens once per padded length in a run of thousands of steps;
    # inside a short timed window it can take most of it, so the row also says what the window ran without them
    in_window = sum(c["seconds"] for c in captures if warmup * accumulate <= c["micro_batch"] < total * accumulate)
    res["captures_in_window_s"] = round(in_window, 2)
    res["tokens_per_s_without_captures"] = round(T / (dt - in_window), 1) if in_window < dt else None
    return res


def watch_captures(trainer, meter) -> list[dict]:
    """Per CUDA-graph capture, through the trainer's capture hook: when (micro-batch index), its length, its time
    and the allocated-memory peak it reached. A capture inside the timed window is in the row's tokens/s."""
    import torch
    log = []

    def watched(inputs, seconds):  # the micro-batch hook records the micro-batch after its step: not counted yet
        log.append(dict(micro_batch=len(meter.batches), tokens=inputs["input_ids"].shape[-1],
                        seconds=round(seconds, 2), peak_gb=round(torch.cuda.max_memory_allocated() / 1e9, 3)))

    trainer.capture_hooks.append(watched)
    return log


def top_kernels(prof, steps: int, n: int = 12) -> list[tuple[str, float, int]]:
    """The GPU kernels that took the most time per step in the profiled steps: (name, ms per step, calls)."""
    rows = [(e.key[:90], e.self_device_time_total / 1e3 / steps, e.count // steps)
            for e in prof.key_averages() if e.self_device_time_total > 0]
    return [(k, round(ms, 2), c) for k, ms, c in sorted(rows, key=lambda r: -r[1])[:n]]


def table(results: list[dict], ceiling_tflops: float | None) -> str:
    lines = ["| config | tokens/s | step s | peak alloc GB | predicted GB | MFU | GPU busy | loss first -> last5 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r.get("status") != "ok":
            lines.append(f"| {r['config']} | failed: {str(r.get('error'))[:80]} | | | | | | |")
            continue
        mfu = f"{100 * r['model_tflops_per_s'] / ceiling_tflops:.1f}%" if ceiling_tflops else "-"
        busy = f"{100 * r['gpu_busy_fraction']:.0f}%" if r.get("gpu_busy_fraction") is not None else "-"
        lines.append(f"| {r['config']} | {r['tokens_per_s']:.0f} | {r['step_s']} | {r.get('peak_alloc_gb')} "
                     f"| {r.get('predicted_peak_gb', '-')} | {mfu} "
                     f"| {busy} | {r.get('loss_first')} -> {r.get('loss_last5')} |")
    return "\n".join(lines)


def run_our_rows(a, out: Path, started: float) -> list[dict]:
    """Each of our rows in its own worker process (clean CUDA memory statistics), within the deadline."""
    results = []
    for name in filter(None, a.ours.split(",")):
        t0 = time.time()
        try:
            proc = subprocess.run([sys.executable, __file__, "--worker", name, *sys.argv[1:]], capture_output=True,
                                  text=True, timeout=max(30.0, a.deadline_s - (time.time() - started)))
        except subprocess.TimeoutExpired as err:
            stdout = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
            proc = subprocess.CompletedProcess(err.cmd, -9, stdout, f"timeout after {err.timeout:.0f} s")
        (out / f"{name}.log").write_text(proc.stdout + proc.stderr)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT_JSON ")]
        results.append(json.loads(line[-1][12:]) if line else dict(config=name, status="failed",
                                                                   error=proc.stderr[-300:]))
        print(f"{name}: {results[-1].get('tokens_per_s')} tokens/s ({time.time() - t0:.0f} s)", flush=True)
    return results


def run_peer_rows(a, out: Path, started: float) -> tuple[list[dict], float | None]:
    """peer_bench.py's own orchestrator, once per model size; returns its rows and the measured matmul ceiling."""
    rows, ceiling, groups = [], None, {}
    for entry in filter(None, a.peers.split(",")):  # "trl_lora_packed:7b" = that peer on peer_bench's 7b dims
        config, _, dims = entry.partition(":")
        groups.setdefault(dims, []).append(config)
    for i, (dims, configs) in enumerate(groups.items()):
        folder = out / f"peers{'_' + dims if dims else ''}"
        left = a.deadline_s - (time.time() - started)
        subprocess.run([sys.executable, a.peer_bench, "--out", str(folder), "--configs", ",".join(configs),
                        "--steps", str(a.steps), "--warmup", str(a.warmup), "--steps-7b", str(a.steps_7b),
                        "--warmup-7b", str(a.warmup_7b), "--profile-steps", str(a.profile_steps),
                        "--deadline-s", str(max(left, 60)), "--seed", str(a.seed), *length_flags(a),
                        *(["--model-override", dims, "--tag", "_" + dims] if dims else []),
                        *([] if i == 0 else ["--no-matmul"])], check=False)
        found = json.loads((folder / "peer_results.json").read_text())["results"]
        ceiling = ceiling or next((r.get("tflops_median") for r in found if r.get("config") == "matmul_bf16"), None)
        rows += [dict(r, config="peer: " + r["config"]) for r in found if r.get("config") not in ("env", "matmul", "matmul_bf16")]
    return rows, ceiling


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench_out")
    p.add_argument("--peer_bench", default=str(REPO.parent / "shared" / "bench" / "peer_bench.py"))
    p.add_argument("--model", default="0.5b", help="peer_bench MODEL_DIMS key (tiny for a CPU plumbing test)")
    p.add_argument("--ours", default=DEFAULT_OURS, help=f"comma list of our configs, from: {', '.join(OURS)}")
    p.add_argument("--peers", default="hf_lora,trl_lora_packed",
                   help="peer_bench configs ('' for none); NAME:7b runs that peer on the 7b dims")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=8, help="samples per optimizer step, as the peers")
    p.add_argument("--warmup_7b", type=int, default=3, help="as peer_bench's --warmup-7b")
    p.add_argument("--steps_7b", type=int, default=12, help="as peer_bench's --steps-7b")
    p.add_argument("--profile_steps", type=int, default=0, help="extra steps under torch.profiler (GPU busy)")
    p.add_argument("--top_kernels", type=int, default=12, help="kernels kept from the profile, most time first")
    p.add_argument("--peers_first", action="store_true", help="run the peers before our rows")
    p.add_argument("--cprofile", action="store_true", help="run our rows under cProfile (slower; for diagnosis)")
    p.add_argument("--memory_peak", action="store_true",
                   help="print the tensors alive at each row's memory peak (not for cuda_graphs rows: recording "
                        "the allocator's history during a capture fails with a SystemError on torch 2.11)")
    p.add_argument("--deadline_s", type=float, default=560, help="wall budget; the peers get what is left")
    p.add_argument("--seed", type=int, default=1234, help="data and init seed, passed to peer_bench too")
    # the synthetic rows' lengths (peer_bench's log-normal, clipped), the same for the peers and our rows; a long-
    # context row: --len_median 32768 --len_sigma 0 --max_len 32768 (every sample that long)
    p.add_argument("--len_median", type=float, default=300.0, help="median sample length in tokens")
    p.add_argument("--len_sigma", type=float, default=0.8, help="log-normal sigma of the lengths (0: all equal)")
    p.add_argument("--min_len", type=int, default=32)
    p.add_argument("--max_len", type=int, default=2048)
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
    started, results, peer_rows, ceiling = time.time(), [], [], None
    for side in (("peers", "ours") if a.peers_first else ("ours", "peers")):
        if side == "ours":
            results = run_our_rows(a, out, started)
        else:
            peer_rows, ceiling = run_peer_rows(a, out, started)
    results = peer_rows + results
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(table(results, ceiling))


if __name__ == "__main__":
    main()
