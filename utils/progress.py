"""A run's progress as it trains, in output_dir/progress.jsonl: something to watch (the Dojo board, `tail -f`).

log_history.json is written once, at the end of a run; checkpoints' trainer_state.json only every save_steps. This
file gets one JSON line per Trainer log (loss, eval_loss, learning_rate, ...) and a step line at most once a second,
each with the step, max_steps and the seconds since training started, so a progress bar, an ETA and a loss curve can
be drawn while the run goes on. A resumed run appends to the same file.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback

PROGRESS_FILE = "progress.jsonl"


class ProgressFile(TrainerCallback):
    def __init__(self, min_interval_s: float = 1.0):
        self.min_interval_s = min_interval_s
        self.start = self.last_write = None

    def _write(self, args, state, **values) -> None:
        self.last_write = time.time()  # on every rank: on_step_end compares with it
        if not state.is_world_process_zero:
            return
        line = {"step": state.global_step, "max_steps": state.max_steps,
                "elapsed_s": round(self.last_write - self.start, 3), **values}
        with open(Path(args.output_dir) / PROGRESS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.time()
        self._write(args, state, event="begin")

    def on_step_end(self, args, state, control, **kwargs):
        if time.time() - self.last_write >= self.min_interval_s or state.global_step == state.max_steps:
            self._write(args, state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._write(args, state, **(logs or {}))

    def on_train_end(self, args, state, control, **kwargs):
        self._write(args, state, event="end")


def read_progress(output_dir) -> list[dict]:
    """The lines written so far (a line cut short by a write in progress is left out)."""
    path = Path(output_dir) / PROGRESS_FILE
    if not path.is_file():
        return []
    lines = []
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            continue
    return lines
