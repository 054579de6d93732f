"""Forward + backward of a micro-batch replayed as one CUDA graph: `cuda_graphs: true`.

A small model's step is a few thousand small kernels, and the GPU spends most of the step waiting for Python to
launch them (bench/README.md measures how much). A CUDA graph records the kernels of one forward + backward
once and replays them with a single launch. A graph fixes every shape and address, so:
  - micro-batches are padded-free rows padded up to a multiple of `cuda_graph_bucket` tokens (PaddingFreeCollator);
    each padded length gets its own graph, captured the first time it is seen (a warm-up run, then the capture);
  - inputs are copied into the graph's own buffers; the gradients live in fixed buffers that every graph
    accumulates into (autograd adds to an existing .grad in place), so gradient accumulation works unchanged;
  - all graphs share one memory pool: they never run at the same time, so their temporaries can overlap. The
    eager warm-up of a new length allocates from that pool too, on the stream the captures use: otherwise it grows a
    cache of its own beside the pool, and the allocator reserves the pool plus the warm-up's peak, about twice the
    activations (bench/README.md, reserved against allocated memory).
Everything inside must stay on the GPU (no .item(), no host-side branching on values): varlen attention and the
chunked loss are written that way; transformers' own mask code skips its host checks while a capture runs.

The optimizer step, clipping and logging stay eager (they are a few fused launches per step).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

# eager runs on a side stream before a capture, so that lazy work (compilation, cuBLAS handles, kernel autotuning
# for a new length) is done and not recorded: two before the first graph, one for each later length
FIRST_WARMUP_RUNS, WARMUP_RUNS = 2, 1


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: dict
    num_items: torch.Tensor
    loss: torch.Tensor


class GraphedStep:
    """loss_fn(inputs, num_items) -> scalar loss; call(inputs, num_items) runs forward + backward by graph replay
    and returns the loss (a copy: the graph's own output is overwritten by the next replay). on_capture: functions
    (inputs, seconds) called after each capture (warm-up runs included)."""

    def __init__(self, params: list[torch.nn.Parameter], loss_fn, on_capture=()):
        self.params = params
        self.loss_fn = loss_fn
        self.on_capture = on_capture
        self.grads = [torch.zeros_like(p) for p in params]
        self.graphs: dict[tuple, _Graph] = {}
        self.pool = torch.cuda.graph_pool_handle()
        self.side = torch.cuda.Stream()  # one stream for every warm-up and capture (each new stream gets its own
        # cuBLAS workspace, and cached blocks of one stream are not reused on another)

    @staticmethod
    def key(inputs: dict) -> tuple:
        return tuple((k, tuple(v.shape), v.dtype) if torch.is_tensor(v) else (k, v) for k, v in sorted(inputs.items()))

    def _bind_grads(self, zero: bool) -> None:
        if zero:
            torch._foreach_zero_(self.grads)
        for p, g in zip(self.params, self.grads):
            p.grad = g

    @contextmanager
    def _allocating_in_pool(self):
        """Every allocation on the device (autograd's backward thread included) comes from the graphs' pool while
        open. Only once a graph holds the pool: torch.cuda.graph creates it at the first capture, and the first
        warm-up's cache is emptied when that capture begins. torch's private allocator calls, as
        torch.cuda.graph's own capture makes them (begin / end / release balance the pool's use count)."""
        begin = getattr(torch._C, "_cuda_beginAllocateToPool", None)
        if not self.graphs or begin is None:
            yield
            return
        device = torch.cuda.current_device()
        begin(device, self.pool)
        try:
            yield
        finally:
            torch._C._cuda_endAllocateToPool(device, self.pool)
            torch._C._cuda_releasePool(device, self.pool)

    def capture(self, inputs: dict, num_items: torch.Tensor, first_micro_batch: bool) -> _Graph:
        static = {k: v.clone() if torch.is_tensor(v) else v for k, v in inputs.items()}
        items = num_items.clone()
        # the warm-up runs add to the gradients: keep what earlier micro-batches of this step accumulated
        accumulated = None if first_micro_batch else [g.clone() for g in self.grads]
        self._bind_grads(zero=False)
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side), self._allocating_in_pool():
            for _ in range(WARMUP_RUNS if self.graphs else FIRST_WARMUP_RUNS):
                self.loss_fn(static, items).backward()
        torch.cuda.current_stream().wait_stream(self.side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, stream=self.side):
            loss = self.loss_fn(static, items)
            loss.backward()
        if accumulated is None:
            torch._foreach_zero_(self.grads)
        else:
            torch._foreach_copy_(self.grads, accumulated)
        return _Graph(graph, static, items, loss.detach())

    def __call__(self, inputs: dict, num_items) -> torch.Tensor:
        first_micro_batch = self.params[0].grad is None  # the Trainer's zero_grad() sets gradients to None
        if num_items is None:
            raise ValueError("cuda_graphs needs the Trainer's num_items_in_batch (labels in every batch)")
        num_items = torch.as_tensor(num_items).to(device=self.grads[0].device, dtype=torch.float32)
        key = self.key(inputs)
        if first_micro_batch:
            self._bind_grads(zero=True)
        entry = self.graphs.get(key)
        if entry is None:
            started = time.perf_counter()
            entry = self.graphs[key] = self.capture(inputs, num_items, first_micro_batch)
            for hook in self.on_capture:
                hook(inputs, time.perf_counter() - started)
        for name, buffer in entry.inputs.items():
            if torch.is_tensor(buffer):
                buffer.copy_(inputs[name], non_blocking=True)
        entry.num_items.copy_(num_items, non_blocking=True)
        self._bind_grads(zero=False)
        entry.graph.replay()
        return entry.loss.clone()
