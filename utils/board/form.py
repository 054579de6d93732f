"""The Train tab's form, generated from the TrainArgs dataclass: one input per field of OUR block (its help text
as the hint, its default as the value), the ready configs of train_args/ as presets, and the argv the form means.

Only fields whose value differs from the preset become flags, so the command shown is the short one a user would
type: `python main_train.py default --max_steps 5`.
"""
from __future__ import annotations

import dataclasses
import json
import shlex

import chat_template
from train_args.base import TRAIN_MODES, TrainArgs
from utils.board.runner import BoardError
from utils.config import TRAIN_ARGS_DIR, config_defaults, resolve_config_path

# a field of TrainArgs' own block that opens a section of the form
SECTIONS = {"model_name_or_path": "Model", "train_data_path": "Data", "train_mode": "Method",
            "output_dir": "Trainer (TrainArgs defaults re-chosen for fine-tuning)"}
CHOICES = {"train_mode": list(TRAIN_MODES), "train_on": ["all", "last"], "special_text": ["error", "keep"],
           "invalid_records": ["error", "skip"], "template_name": ["", *sorted(chat_template.TEMPLATES)]}
UNSET = ""  # an optional field left empty: no flag, the preset's value stays


def own_fields() -> list[dataclasses.Field]:
    """Every field TrainArgs declares itself, in the order of train_args/base.py (not the inherited HF ones)."""
    own = list(TrainArgs.__dict__["__annotations__"])  # dataclasses.fields puts re-declared HF fields first
    return sorted((f for f in dataclasses.fields(TrainArgs) if f.name in own), key=lambda f: own.index(f.name))


def sections(fields) -> list[tuple[str, list[dataclasses.Field]]]:
    """[(title, fields)] in order, a new section at each field named in SECTIONS."""
    grouped = []
    for f in fields:
        if f.name in SECTIONS or not grouped:
            grouped.append((SECTIONS.get(f.name, "Model"), []))
        grouped[-1][1].append(f)
    return grouped


def presets() -> list[str]:
    return sorted(p.stem for p in TRAIN_ARGS_DIR.glob("*.py") if p.stem not in ("__init__", "base"))


def kind(f: dataclasses.Field) -> str:
    """checkbox, tristate (bool | None: auto/true/false), choice, list or text."""
    # a string under `from __future__ import annotations`, the type itself once HfArgumentParser has resolved it
    annotation = "bool" if f.type is bool else str(f.type)
    if f.name in CHOICES:
        return "choice"
    if annotation == "bool":
        return "checkbox"
    if annotation.startswith("bool") and "None" in annotation:
        return "tristate"
    return "list" if annotation.startswith("list[") else "text"


def shown(f: dataclasses.Field, value):
    """A field value as the form shows it."""
    k = kind(f)
    if k == "checkbox":
        return bool(value)
    if k == "tristate":
        return "auto" if value is None else str(bool(value)).lower()
    if value is None:
        return UNSET
    if isinstance(value, list):
        return shlex.join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def preset_values(preset: str) -> list:
    """The form's values for a preset: TrainArgs' defaults with the preset's changes."""
    base = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
            for f in own_fields()}
    base.update({k: v for k, v in config_defaults(resolve_config_path(preset)).items() if k in base})
    return [shown(f, base[f.name]) for f in own_fields()]


def changed_fields(preset: str, values: list) -> dict[str, str | list[str]]:
    """{field: CLI value} for every input that differs from the preset."""
    fields = {}
    for f, value, default in zip(own_fields(), values, preset_values(preset)):
        if value == default or (value in (None, UNSET) and default in (None, UNSET)):
            continue
        k = kind(f)
        if k == "checkbox":
            fields[f.name] = "true" if value else "false"
        elif k == "tristate":
            if value == "auto":
                raise BoardError(f"{f.name}: 'auto' cannot replace the preset's {default}; pick true or false")
            fields[f.name] = value
        elif value in (None, UNSET):
            raise BoardError(f"{f.name}: cannot be emptied from the command line; choose another preset or value")
        elif k == "list":
            try:
                fields[f.name] = shlex.split(value)  # quoting only, nothing is run
            except ValueError as err:
                raise BoardError(f"{f.name}: {err}") from None
        else:
            fields[f.name] = str(value)
    return fields
