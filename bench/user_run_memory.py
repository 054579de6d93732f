"""`python main_train.py ...` with a memory trace of its training: where the peak of a user's run happens and goes.

    python bench/user_run_memory.py [--trace] [--report] qwen_lora_fast --model_name_or_path DIR \
        --train_data_path data.jsonl --max_steps 6 ...

--trace prints, at each event of the training loop (train begin, each CUDA-graph capture, each micro-batch with the
lengths of its pieces, each optimizer step), the memory allocated now, the peak allocated so far and the memory
reserved: the event at which the peak rises is where to look.
--report adds bench/memory_peak.py's report of the tensors alive at the peak, grouped by the line that allocated
them. Recording starts at train begin, just after main_train starts its measured peak, so the report and the
logged "measured peak GPU memory in training" cover the same span; the allocations alive before it (weights,
adapters) are the baseline. PyTorch's allocator history does not follow CUDA-graph captures, and with it a
compiled layer's recompute failed (SystemError from autograd, torch 2.11; the same run without --report trained):
report with --cuda_graphs false --compile_layers false, and keep --max_steps small (the history holds the last
400,000 allocator events).

The trace goes through main_train.main's `instrument` seam and the trainer's hooks (micro_batch_hooks,
capture_hooks) and a callback: no product method is replaced.
"""
from __future__ import annotations

import sys

import torch
from transformers import TrainerCallback

import main_train
import memory_peak  # bench/memory_peak.py, beside this file

GB = 1e9


def trace(event: str) -> None:
    print(f"[trace] {event:<46} allocated {torch.cuda.memory_allocated() / GB:6.3f} GB, peak so far "
          f"{torch.cuda.max_memory_allocated() / GB:6.3f}, reserved {torch.cuda.memory_reserved() / GB:6.3f}",
          flush=True)


class MemoryRecorder(TrainerCallback):
    """Resets the peak at train begin (and starts the allocator history with --report); traces each step."""

    def __init__(self, report: bool, trace_steps: bool):
        self.report, self.trace_steps, self.baseline = report, trace_steps, None

    def on_train_begin(self, args, state, control, **kw):
        torch.cuda.reset_peak_memory_stats()
        if self.report:
            self.baseline = memory_peak.start()
        trace("train begin (peak reset)")

    def on_step_end(self, args, state, control, **kw):
        if self.trace_steps:
            trace(f"optimizer step {state.global_step} done")


def traced_micro_batch(inputs, loss) -> None:
    pieces = [p["input_ids"].shape[-1] for p in inputs.get("pieces", [inputs])]
    trace(f" micro-batch of {inputs['input_ids'].shape[-1]} tokens, pieces {pieces}")


def traced_capture(inputs, seconds) -> None:
    trace(f"  capture of {inputs['input_ids'].shape[-1]} tokens done ({seconds:.1f} s)")


if __name__ == "__main__":
    argv = sys.argv[1:]
    flags = {f for f in ("--trace", "--report") if f in argv}
    argv = [a for a in argv if a not in flags]
    recorder = MemoryRecorder("--report" in flags, "--trace" in flags)

    def instrument(trainer):
        trainer.add_callback(recorder)
        if "--trace" in flags:
            trainer.micro_batch_hooks.append(traced_micro_batch)
            trainer.capture_hooks.append(traced_capture)

    main_train.main(argv, instrument=instrument if torch.cuda.is_available() else None)
    if "--report" in flags:
        print(memory_peak.report(recorder.baseline) if recorder.baseline is not None else "no CUDA: no memory report")
