"""An output_dir belongs to one run: which checkpoints a resume may continue, and what an overwrite moves aside.

A run gets an id when it starts. The id is written to output_dir/dojo_run_id.json (with the step the run finished
at, once it has) and, through the RunIdentity callback, into every checkpoint's trainer_state.json, the file the
Trainer writes last, so a checkpoint is complete and tagged by the same write. Then:
  - `--resume_from_checkpoint true` continues only checkpoints of the run recorded in output_dir; a checkpoint of
    another run found there is refused (the Trainer's rotation would delete the newer run's checkpoints around it).
  - a run that already finished trains nothing; one stopped during its final save only redoes that save.
  - `--overwrite_output_dir true` moves what the folder held to a sibling OUT.replaced-TIME folder (and says so):
    nothing of the old run stays resumable, and nothing of the user's is deleted.
"""
from __future__ import annotations

import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback, TrainerState
from transformers.trainer_callback import ExportableState

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARK = "trainer_state.json"  # the Trainer writes it last, after weights, optimizer and RNG states
RUN_RECORD = "dojo_run_id.json"
TRUE, FALSE = ("true", "yes", "1"), ("", "false", "no", "0", "none")


class RunIdentity(TrainerCallback, ExportableState):
    """Stores the run id in trainer_state.json's stateful_callbacks at every checkpoint save."""

    def __init__(self, run_id: str):
        self.run_id = run_id

    def state(self) -> dict:
        return {"args": {"run_id": self.run_id}, "attributes": {}}

    def on_train_begin(self, args, state, control, **kwargs):
        # a state resumed from a checkpoint written before run ids existed has no entry for this callback
        state.stateful_callbacks[type(self).__name__] = self.state()


def checkpoint_state(path: Path) -> dict | None:
    """The checkpoint's parsed trainer_state.json, or None if the save did not finish (missing, empty, cut short)."""
    try:
        state = json.loads((Path(path) / COMPLETE_MARK).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    ok = isinstance(state, dict) and isinstance(state.get("global_step"), int)
    return state if ok else None


def checkpoint_run_id(state: dict) -> str | None:
    """The id of the run that wrote the checkpoint (None: written before run ids existed)."""
    entry = (state.get("stateful_callbacks") or {}).get(RunIdentity.__name__) or {}
    return (entry.get("args") or {}).get("run_id")


def rank0() -> bool:
    """The process that writes the run folder (RANK is set by torchrun and accelerate; a single process is rank 0)."""
    return int(os.environ.get("RANK", "0")) == 0


def checkpoint_folders(output_dir, complete_mark: str | None = None) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint-<step> folder in output_dir, oldest first; with complete_mark, only those
    holding that file (the one a save writes last)."""
    out = Path(output_dir)
    found = []
    for p in out.glob("checkpoint-*") if out.is_dir() else ():
        m = CHECKPOINT_RE.match(p.name)
        if m and p.is_dir() and (complete_mark is None or (p / complete_mark).is_file()):
            found.append((int(m.group(1)), p))
    return sorted(found, key=lambda f: f[0])


def complete_checkpoints(output_dir) -> list[tuple[int, Path, dict]]:
    """(step, folder, state) of every complete checkpoint in output_dir, oldest first."""
    return [(step, p, state) for step, p in checkpoint_folders(output_dir)
            if (state := checkpoint_state(p)) is not None]


def last_checkpoint(output_dir) -> str | None:
    """Newest complete checkpoint in output_dir, of any run; a checkpoint cut short by a crash is skipped."""
    found = complete_checkpoints(output_dir)
    return str(found[-1][1]) if found else None


def read_record(output_dir) -> dict | None:
    try:
        record = json.loads((Path(output_dir) / RUN_RECORD).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("run_id"), str) else None


def resume_value(value) -> str | None:
    """None (start afresh), "true" (newest complete checkpoint of the folder's run) or a checkpoint path."""
    if value is None or value is False or str(value).strip().lower() in FALSE:
        return None
    return "true" if value is True or str(value).strip().lower() in TRUE else str(value)


@dataclass
class RunPlan:
    run_id: str
    checkpoint: str | None = None  # resume from here
    adopted: bool = False          # checkpoints without a run id belong to this run (a folder of an older version)
    foreign: list[Path] = field(default_factory=list)  # entries of output_dir that are not this run's
    finished: bool = False         # the run finished already: nothing to do
    final_save_only: bool = False  # the checkpoint is at the last step: only the final save is missing


def plan_run(args) -> RunPlan:
    """Which run this invocation is, where it resumes from, and what in output_dir is not its own. Reads only."""
    out, value = Path(args.output_dir), resume_value(args.resume_from_checkpoint)
    record = read_record(out)
    if value is None:
        plan = RunPlan(uuid.uuid4().hex)
    elif value == "true":
        plan = _plan_resume_newest(out, record, args)
    else:
        plan = _plan_resume_path(Path(value), out, record, args)
    owns_folder = value is not None and (record is None or record["run_id"] == plan.run_id) and (
        record is not None or value == "true" or Path(value).resolve().parent == out.resolve())
    plan.foreign = foreign_entries(out, plan, owns_folder)
    return plan


def _plan_resume_newest(out: Path, record: dict | None, args) -> RunPlan:
    checkpoints = complete_checkpoints(out)
    if record is None:  # no record (an older version wrote the folder): its checkpoints must be of one run
        ids = {checkpoint_run_id(state) for _, _, state in checkpoints}
        if len(ids) > 1:
            raise FileExistsError(f"--resume_from_checkpoint true: {out} holds checkpoints of {len(ids)} different "
                                  f"runs and no {RUN_RECORD}; pass the one to continue as --resume_from_checkpoint "
                                  "PATH")
        plan = RunPlan(ids.pop() if ids and None not in ids else uuid.uuid4().hex, adopted=None in ids)
    else:
        plan = RunPlan(record["run_id"], adopted=bool(record.get("adopted")))
        finished = record.get("finished_step")
        if isinstance(finished, int) and (args.max_steps <= 0 or args.max_steps <= finished):
            plan.finished = True
            return plan
    mine = [(step, p, s) for step, p, s in checkpoints if belongs(s, plan)]
    if not mine:
        raise FileNotFoundError(f"--resume_from_checkpoint true: no complete checkpoint of this run in {out}")
    _, path, state = mine[-1]
    plan.checkpoint, plan.final_save_only = str(path), _at_last_step(state, args)
    return plan


def _plan_resume_path(path: Path, out: Path, record: dict | None, args) -> RunPlan:
    if not path.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {path}: no such folder")
    state = checkpoint_state(path)
    if state is None:
        raise ValueError(f"--resume_from_checkpoint {path}: incomplete checkpoint (no readable {COMPLETE_MARK}); a "
                         "crash cut its save short. Resume from an earlier one, or use true for the newest complete "
                         "one.")
    run_id, inside = checkpoint_run_id(state), path.resolve().parent == out.resolve()
    if record is not None and (run_id == record["run_id"] or (run_id is None and record.get("adopted"))):
        plan = RunPlan(record["run_id"], adopted=bool(record.get("adopted")))
    elif record is not None and inside:
        raise FileExistsError(f"--resume_from_checkpoint {path}: the checkpoint is not of run {record['run_id']}, "
                              f"which owns {out}; copy it to a new output_dir to continue it there")
    else:
        plan = RunPlan(run_id or uuid.uuid4().hex, adopted=run_id is None)
    plan.checkpoint, plan.final_save_only = str(path), _at_last_step(state, args)
    return plan


def _at_last_step(state: dict, args) -> bool:
    last = args.max_steps if args.max_steps > 0 else state.get("max_steps", 0)
    return state["global_step"] >= last > 0


def belongs(state: dict, plan: RunPlan) -> bool:
    run_id = checkpoint_run_id(state)
    return run_id == plan.run_id or (run_id is None and plan.adopted)


def foreign_entries(out: Path, plan: RunPlan, owns_folder: bool) -> list[Path]:
    """Everything in a folder another run owns; in the run's own folder, checkpoints of other runs."""
    if not out.is_dir():
        return []
    if not owns_folder:
        return sorted(out.iterdir())
    return [p for _, p, state in complete_checkpoints(out) if not belongs(state, plan)]


def check_output_dir(args) -> None:
    """Refuse a non-empty output_dir unless overwrite_output_dir is set (for tools that write one folder)."""
    out = Path(args.output_dir)
    if out.is_dir() and any(out.iterdir()) and not args.overwrite_output_dir:
        raise FileExistsError(f"output_dir {out} is not empty. Choose another output_dir, or pass "
                              "--overwrite_output_dir true.")


def refuse_foreign(args, plan: RunPlan) -> None:
    """FileExistsError when output_dir holds what is not this run's and overwrite_output_dir is not set."""
    if not plan.foreign or args.overwrite_output_dir:
        return
    out = Path(args.output_dir)
    if plan.checkpoint is None:
        raise FileExistsError(f"output_dir {out} is not empty. Choose another output_dir, resume with "
                              "--resume_from_checkpoint true, or pass --overwrite_output_dir true to move its "
                              f"contents to {out}.replaced-TIME and start afresh.")
    names = ", ".join(p.name for p in plan.foreign[:5])
    raise FileExistsError(f"output_dir {out} holds what is not run {plan.run_id}'s ({names}); the Trainer's "
                          "checkpoint rotation would mix them with this run's. Move them out, or pass "
                          f"--overwrite_output_dir true to move them to {out}.replaced-TIME.")


def claim_output_dir(args, plan: RunPlan) -> str | None:
    """Make output_dir this run's: move what is not its own aside, write the run record and train_args.json.
    Returns a line saying what was moved (None when nothing was). Rank 0 only."""
    out = Path(args.output_dir)
    moved = move_aside(out, plan.foreign, "that were not this run's") if plan.foreign else None
    out.mkdir(parents=True, exist_ok=True)
    record = read_record(out) or {}
    if record.get("run_id") != plan.run_id:
        record = {"run_id": plan.run_id, "adopted": plan.adopted, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    record["finished_step"] = None
    _write_json(out / RUN_RECORD, record)
    (out / "train_args.json").write_text(args.to_json_string(), encoding="utf-8")
    return moved


def move_aside(out: Path, entries: list[Path], which: str = "") -> str:
    """Move entries of output_dir to a new sibling folder OUT.replaced-TIME; returns the line saying so."""
    dest = out.parent / f"{out.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    while dest.exists():
        dest = dest.with_name(dest.name + "-1")
    dest.mkdir(parents=True)
    for p in entries:
        p.rename(dest / p.name)
    names = f"{', '.join(p.name for p in entries[:5])}{', ...' if len(entries) > 5 else ''}"
    return (f"overwrite_output_dir: moved {len(entries)} entries of {out} {which + ' ' if which else ''}({names}) "
            f"to {dest}; nothing was deleted, remove it when you no longer need it")


def train(trainer, plan: RunPlan, log) -> None:
    """Train from scratch or from the plan's checkpoint; a checkpoint at the last step is only loaded (a run stopped
    during its final save), since the Trainer would train one step past max_steps from it."""
    if plan.final_save_only:
        log(f"{plan.checkpoint} is at the last step: no training, only the final save")
        trainer.state = TrainerState.load_from_json(str(Path(plan.checkpoint) / COMPLETE_MARK))
        trainer._load_from_checkpoint(plan.checkpoint)  # the weights, as train(resume_from_checkpoint=...) would
        return
    if plan.checkpoint:
        log(f"resuming run {plan.run_id} from {plan.checkpoint}")
    trainer.train(resume_from_checkpoint=plan.checkpoint)


def mark_finished(output_dir, plan: RunPlan, step: int) -> None:
    """Record that the run wrote its final outputs (rank 0, after everything else)."""
    record = read_record(output_dir) or {"run_id": plan.run_id, "adopted": plan.adopted}
    record["finished_step"] = step
    _write_json(Path(output_dir) / RUN_RECORD, record)


def _write_json(path: Path, value: dict) -> None:
    """Write-then-rename, so a crash leaves the old record or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1), encoding="utf-8")
    tmp.replace(path)
