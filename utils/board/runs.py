"""What the board knows about run folders: read from the files main_train.py writes, never guessed.

A run folder holds train_args.json (written before the model loads), progress.jsonl (while it trains),
checkpoint-N/ folders, and at the end the model or adapter, dojo_run.json and log_history.json. Runs started from
the board also have a record in OUTPUT_ROOT/.board/ with the command, the log and the exit code.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from utils.progress import read_progress

BOARD_DIR = ".board"  # under the output root: the board's own records of the runs it started
SCORE_RE = re.compile(r"held-out exact match: ([\d.]+)% before -> ([\d.]+)% after")


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in ("train_args.json", "dojo_run.json", "config.json",
                                                               "adapter_config.json"))


def list_runs(output_root) -> list[Path]:
    """Run folders directly under the output root or one level below (output/group/run), newest first."""
    root = Path(output_root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if child.name.startswith(".") or not child.is_dir():
            continue
        if is_run_folder(child):
            found.append(child)
        else:
            found += [g for g in child.iterdir() if is_run_folder(g)]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def chat_choices(output_root) -> list[str]:
    """Runs that hold something to chat with: a model (config.json) or an adapter (adapter_config.json)."""
    return [str(p) for p in list_runs(output_root)
            if (p / "config.json").is_file() or (p / "adapter_config.json").is_file()]


def board_record(output_root, run_dir) -> dict | None:
    """The board's record of the latest start of this run folder, if the board started it."""
    records = sorted(Path(output_root, BOARD_DIR).glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in records:
        record = _json(path)
        if record and Path(record.get("output_dir", "")).resolve() == Path(run_dir).resolve():
            return record
    return None


def log_history(run_dir) -> list[dict]:
    """The Trainer's log: log_history.json of a finished run, else the newest checkpoint's, else progress.jsonl."""
    run_dir = Path(run_dir)
    history = _json(run_dir / "log_history.json")
    if history is None:
        states = sorted(run_dir.glob("checkpoint-*/trainer_state.json"),
                        key=lambda p: int(p.parent.name.split("-")[-1]))
        progress = [h for h in read_progress(run_dir) if "loss" in h or "eval_loss" in h]
        state = _json(states[-1]) if states else None
        checkpointed = state.get("log_history", []) if state else []
        history = progress if len(progress) >= len(checkpointed) else checkpointed
    return history


def loss_points(history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    return {name: [(h["step"], h[key]) for h in history if key in h and "step" in h]
            for name, key in (("train", "loss"), ("eval", "eval_loss"))}


def status(run_dir, record: dict | None, running: bool) -> str:
    run_dir = Path(run_dir)
    if running:
        return "running"
    if record and record.get("stop_requested"):
        return "stopped from the board (resumable: --resume_from_checkpoint true)"
    if (run_dir / "log_history.json").is_file():
        return "finished"
    if record and record.get("returncode") not in (None, 0):
        return f"failed (exit {record['returncode']})"
    if any(run_dir.glob("checkpoint-*/trainer_state.json")):
        return "stopped (resumable: --resume_from_checkpoint true)"
    return "incomplete" if (run_dir / "train_args.json").is_file() else "model folder"


def summary(output_root, run_dir, running: bool = False) -> dict:
    """One row of the runs table: config, status, final metrics, before/after score."""
    run_dir = Path(run_dir)
    config = _json(run_dir / "train_args.json") or {}
    record = board_record(output_root, run_dir)
    history = log_history(run_dir)
    train_rows = [h for h in history if "loss" in h]
    evals = [h for h in history if "eval_loss" in h]
    end = next((h for h in reversed(history) if "train_runtime" in h), {})
    before = after = None
    log = Path(record["log"]) if record and record.get("log") else None
    if log and log.is_file() and (m := SCORE_RE.search(log.read_text(encoding="utf-8", errors="replace"))):
        before, after = float(m.group(1)), float(m.group(2))
    return {"run": str(run_dir), "status": status(run_dir, record, running),
            "model": config.get("model_name_or_path", ""), "mode": config.get("train_mode", ""),
            "steps": max((h.get("step", 0) for h in history), default=0),
            "last loss": train_rows[-1]["loss"] if train_rows else None,
            "eval loss": evals[-1]["eval_loss"] if evals else None,
            "runtime s": end.get("train_runtime"),
            "exact match before %": before, "after %": after}
