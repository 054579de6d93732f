"""`python main_train.py ...` with a memory trace of its training: where the peak of a user's run happens and goes.

    python bench/user_run_memory.py [--trace] [--report] qwen_lora_fast --model_name_or_path DIR \
        --train_data_path data.jsonl --max_steps 6 ...

--trace prints, at each event of the training loop (train begin, each CUDA-graph capture's warm-up runs and the
capture itself, each micro-batch with the lengths of its pieces, each optimizer step), the memory allocated now,
the peak allocated so far and the memory reserved: the event at which the peak rises is where to look.
--report adds bench/memory_peak.py's report of the tensors alive at the peak, grouped by the line that allocated
them. Recording starts where main_train starts its measured peak (just before train()), so the report and the
logged "measured peak GPU memory in training" cover the same span; the allocations alive before it (weights,
adapters) are the baseline. PyTorch's allocator history does not follow CUDA-graph captures, and with it a
compiled layer's recompute failed (SystemError from autograd, torch 2.11; the same run without --report trained):
report with --cuda_graphs false --compile_layers false, and keep --max_steps small (the history holds the last
400,000 allocator events).
"""
from __future__ import annotations

import sys

import torch
from transformers import TrainerCallback

import main_train
import memory_peak  # bench/memory_peak.py, beside this file
from utils.cuda_graphs import GraphedStep
from utils.trainer import DojoTrainer

GB = 1e9
baseline = None


def trace(event: str) -> None:
    print(f"[trace] {event:<46} allocated {torch.cuda.memory_allocated() / GB:6.3f} GB, peak so far "
          f"{torch.cuda.max_memory_allocated() / GB:6.3f}, reserved {torch.cuda.memory_reserved() / GB:6.3f}",
          flush=True)


def reset_and_record(report: bool) -> None:
    global baseline
    torch.cuda.reset_peak_memory_stats()
    if report:
        baseline = memory_peak.start()
    trace("reset before train()")


class TraceSteps(TrainerCallback):
    def on_train_begin(self, args, state, control, **kw):
        trace("train begin")

    def on_step_end(self, args, state, control, **kw):
        trace(f"optimizer step {state.global_step} done")


def install_trace() -> None:
    """Wrap the training loop's events with trace(); nothing else changes."""
    capture, training_step, build_trainer = GraphedStep.capture, DojoTrainer.training_step, main_train.build_trainer

    def traced_capture(self, inputs, *rest):
        tokens, loss_fn, calls = inputs["input_ids"].shape[-1], self.loss_fn, [0]

        def counted(*a):  # each call starts a warm-up run, the last one the capture
            calls[0] += 1
            trace(f"  capture of {tokens} tokens: forward {calls[0]} starts")
            return loss_fn(*a)

        self.loss_fn = counted
        try:
            entry = capture(self, inputs, *rest)
        finally:
            self.loss_fn = loss_fn
        trace(f"  capture of {tokens} tokens done ({len(self.graphs) + 1} graphs)")
        return entry

    def traced_step(self, model, inputs, *rest, **kw):
        loss = training_step(self, model, inputs, *rest, **kw)
        pieces = [p["input_ids"].shape[-1] for p in inputs.get("pieces", [inputs])]
        trace(f" micro-batch of {inputs['input_ids'].shape[-1]} tokens, pieces {pieces}")
        return loss

    GraphedStep.capture, DojoTrainer.training_step = traced_capture, traced_step
    main_train.build_trainer = lambda *a, callbacks=(), **k: build_trainer(*a, **k,
                                                                       callbacks=[*callbacks, TraceSteps()])


if __name__ == "__main__":
    argv = sys.argv[1:]
    flags = {f for f in ("--trace", "--report") if f in argv}
    argv = [a for a in argv if a not in flags]
    if torch.cuda.is_available():
        main_train.reset_measured_peak = lambda: reset_and_record("--report" in flags)  # called before train()
        if "--trace" in flags:
            install_trace()
    main_train.main(argv)
    if "--report" in flags:
        print(memory_peak.report(baseline) if baseline is not None else "no CUDA: no memory report")
