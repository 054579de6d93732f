"""Where a run's peak GPU memory goes: the tensors alive at the peak, grouped by the line that allocated them.

    python bench/bench.py --ours dojo_lora_graphs --peers "" --memory_peak ...   # prints this report per row

Uses PyTorch's allocator history (torch.cuda.memory._record_memory_history): every allocation and free with its
Python stack. Replaying the events finds the moment of the largest total and the live blocks at that moment;
memory allocated before recording started (the weights) is the baseline.
"""
from __future__ import annotations

from collections import Counter

import torch

OWN_CODE = ("/utils/", "/peft/", "/transformers/", "/torch/", "/bench/")


def start() -> int:
    torch.cuda.memory._record_memory_history(max_entries=400_000)
    return torch.cuda.memory_allocated()


def _site(frames: list[dict]) -> str:
    """The innermost Python frame of our stack or a library's, as file:line function."""
    for f in frames:
        name = f.get("filename", "")
        if name.endswith(".py") and any(part in name for part in OWN_CODE):
            return f"{'/'.join(name.split('/')[-2:])}:{f.get('line')} {f.get('name')}"
    return "?"


def report(baseline: int, top: int = 15) -> str:
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    live, total, peak, at_peak = {}, 0, 0, {}
    for trace in snapshot["device_traces"]:
        for event in trace:
            if event["action"] == "alloc":
                live[event["addr"]] = (event["size"], _site(event.get("frames", [])))
                total += event["size"]
            elif event["action"] in ("free_requested",) and event["addr"] in live:
                total -= live.pop(event["addr"])[0]
            if total > peak:
                peak, at_peak = total, dict(live)
    by_site = Counter()
    for size, site in at_peak.values():
        by_site[site] += size
    lines = [f"baseline (allocated before recording) {baseline / 1e9:.3f} GB + peak of recorded {peak / 1e9:.3f} GB"]
    lines += [f"  {size / 1e6:9.1f} MB  {site}" for site, size in by_site.most_common(top)]
    return "\n".join(lines)
