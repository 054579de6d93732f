"""Start, watch and stop main_train.py from the board.

The command is an argv list, `python main_train.py CONFIG --field value ...`, run without a shell: CONFIG is a
ready config of train_args/, every flag a field of TrainArgs, and the values travel as separate arguments, so no
text typed in the page is ever run. Before starting, the argv goes through the same checks main_train.py makes
before it writes anything (utils.config.parse_args, output_dir, resume, the data files).

Stop: the board adds --enable_jit_checkpoint true, so the HF Trainer answers SIGTERM by saving a checkpoint at the
step it is in and ending training; main_train then saves its outputs as after any run. The run can go on later
with --resume_from_checkpoint true.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from train_args.base import TrainArgs
from utils.board.runs import BOARD_DIR

REPO = Path(__file__).resolve().parents[2]
FIELD_NAMES = {f.name for f in dataclasses.fields(TrainArgs)}
STOP_FLAGS = ["--enable_jit_checkpoint", "true"]
BAR_RE = re.compile(r"\d+%\|")  # a tqdm progress bar line: the next one replaces it in the page's log


class BoardError(ValueError):
    pass


def build_argv(config: str, fields: dict[str, str | list[str]]) -> list[str]:
    """[main_train.py, CONFIG, --name, value, ...]; a list value becomes several arguments (nargs="+")."""
    argv = [str(REPO / "main_train.py"), config]
    for name, value in fields.items():
        if name not in FIELD_NAMES:
            raise BoardError(f"unknown field {name!r}: not a field of TrainArgs (python main_train.py --help)")
        argv += [f"--{name}", *value] if isinstance(value, list) else [f"--{name}", value]
    return argv


def parse_extra(text: str) -> dict[str, str | list[str]]:
    """The free 'extra fields' box: one `--name value [value ...]` per line, for the HF Trainer's own fields."""
    fields = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            words = shlex.split(line)  # quoting only: nothing is run
        except ValueError as err:
            raise BoardError(f"extra fields line {lineno}: {err}") from None
        name = words[0][2:] if words[0].startswith("--") else None
        if name not in FIELD_NAMES or len(words) < 2:
            raise BoardError(f"extra fields line {lineno}: expected '--field value' with a field of TrainArgs, "
                             f"got {line.strip()!r}")
        fields[name] = words[1] if len(words) == 2 else words[1:]
    return fields


def validate(argv: list[str]):
    """Run main_train's checks on argv, in this process; the TrainArgs, or BoardError with the CLI's message."""
    from utils.config import parse_args
    from utils.data import load_conversations
    from utils.run_folder import plan_run, refuse_foreign
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = parse_args(argv[1:], check_files=True)
        plan = plan_run(args)  # the board runs from the repository root, as main_train.py does (__main__.py)
        if plan.finished:
            raise BoardError(f"run {plan.run_id} in {args.output_dir} already finished: nothing to train")
        refuse_foreign(args, plan)
        for paths in (args.train_data_path, args.eval_data_path, args.score_data_path):
            if paths:
                load_conversations(paths, args.invalid_records)
    except SystemExit:  # argparse: a bad value or an unknown flag; its message went to stderr
        message = (stderr.getvalue().strip().splitlines() or ["invalid arguments"])[-1]
        raise BoardError(message.removeprefix("main_train.py: error: ")) from None
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        raise BoardError(str(err)) from None
    return args


def command_line(argv: list[str]) -> str:
    """The command as a user would type it from the repository root (shown, never run)."""
    return shlex.join(["python", "main_train.py", *argv[1:]])


class TrainRun:
    """One main_train.py subprocess: its merged stdout/stderr kept in memory (the last lines) and in a log file."""

    def __init__(self, argv: list[str], output_dir: str, output_root: Path):
        self.argv, self.output_dir = argv + STOP_FLAGS, str(Path(REPO, output_dir))
        self.lines: deque[str] = deque(maxlen=400)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        board = Path(output_root, BOARD_DIR)
        board.mkdir(parents=True, exist_ok=True)
        self.record_path = board / f"{stamp}-{Path(output_dir).name}.json"
        self.log_path = board / f"{stamp}-{Path(output_dir).name}.log"
        self.stop_requested = False
        self.proc = subprocess.Popen([sys.executable, *self.argv], cwd=REPO, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._write_record()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _write_record(self) -> None:
        record = {"argv": self.argv, "command": command_line(self.argv), "output_dir": self.output_dir,
                  "log": str(self.log_path), "pid": self.proc.pid, "returncode": self.proc.returncode,
                  "stop_requested": self.stop_requested}
        self.record_path.write_text(json.dumps(record, indent=1), encoding="utf-8")

    def _read(self) -> None:
        with open(self.log_path, "w", encoding="utf-8") as log:
            for line in self.proc.stdout:  # text mode turns tqdm's \r into line ends
                log.write(line)
                log.flush()
                line = line.rstrip()
                if self.lines and BAR_RE.search(line) and BAR_RE.search(self.lines[-1]):
                    self.lines[-1] = line
                elif line:
                    self.lines.append(line)
        self.proc.wait()
        self._write_record()

    @property
    def running(self) -> bool:
        return self.proc.poll() is None or self.reader.is_alive()

    def stop(self) -> str:
        """SIGTERM: the Trainer checkpoints at the current step and ends training (enable_jit_checkpoint)."""
        if not self.running:
            return "the run has already ended"
        self.stop_requested = True
        self._write_record()
        self.proc.send_signal(signal.SIGTERM)
        return "stopping: the Trainer saves a checkpoint at the current step, then the run ends"

    def log_text(self) -> str:
        return "\n".join(self.lines)

    def state(self) -> str:
        if self.running:
            return "stopping" if self.stop_requested else "running"
        code = self.proc.returncode
        if self.stop_requested:  # SIGTERM before the Trainer's handler is set ends the process at once
            return "stopped: resume with --resume_from_checkpoint true" if code == 0 else \
                f"stopped before training began (exit {code})"
        return "finished" if code == 0 else f"failed (exit {code})"
