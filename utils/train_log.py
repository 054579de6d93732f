"""What a user watches during and after a run: tokens per second and ETA in every training log, and a closing summary.

The Trainer counts the tokens it feeds (include_num_input_tokens_seen "non_padding": attention-mask ones, or
non-pad ids in padding-free rows); this callback turns the count into a rate over the last logging interval and
the remaining steps into an ETA, both added to the log dict, so the console line, tensorboard and
log_history.json show them.
"""
from __future__ import annotations

import math
import time

from transformers import TrainerCallback


class ProgressCallback(TrainerCallback):
    def __init__(self):
        self.start_time = self.last_time = None
        self.start_step = self.last_step = self.start_tokens = self.last_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_time = self.last_time = time.perf_counter()
        self.start_step = self.last_step = state.global_step  # a resumed run counts from where it resumed
        self.start_tokens = self.last_tokens = state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs or self.start_time is None:  # training logs only, not eval or the end
            return
        now, step, tokens = time.perf_counter(), state.global_step, state.num_input_tokens_seen
        added = {}
        if now > self.last_time and tokens > self.last_tokens:
            added["tokens_per_second"] = round((tokens - self.last_tokens) / (now - self.last_time), 1)
        if step > self.start_step and state.max_steps > 0:
            seconds_per_step = (now - self.start_time) / (step - self.start_step)
            added["eta_seconds"] = round(max(0, state.max_steps - step) * seconds_per_step)
        logs.update(added)
        if state.log_history and state.log_history[-1].get("step") == step:  # the Trainer stored a copy of logs
            state.log_history[-1].update(added)
        self.last_time, self.last_step, self.last_tokens = now, step, tokens


def add_progress(trainer) -> ProgressCallback:
    """Put the callback first: the reporting callbacks (tensorboard, ...) read the same log dict after it."""
    callback = ProgressCallback()
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def run_summary(trainer, seconds: float, output_dir: str) -> str:
    """One closing line: wall time, tokens trained on, best eval loss (with its step), where the output is."""
    state = trainer.state
    evals = [(h["eval_loss"], h["step"]) for h in state.log_history if "eval_loss" in h]
    finite = [e for e in evals if math.isfinite(e[0])]
    best = f", best eval loss {min(finite)[0]:.4f} (step {min(finite)[1]})" if finite else ""
    tokens = f", {state.num_input_tokens_seen:,} tokens" if state.num_input_tokens_seen else ""
    return f"summary: {state.global_step} steps in {format_duration(seconds)}{tokens}{best}; output in {output_dir}"
