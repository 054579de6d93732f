"""Turn `python main_train.py [CONFIG] [--field value ...]` into one TrainArgs.

CONFIG is a ready config (a short name such as `qwen_lora`, or a path to a .py file in train_args/ style), or a
YAML/JSON file of field values. Its values become the parser's defaults, so any field can still be overridden on
the command line, and `--help` lists every field of TrainArgs with its help text.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

from transformers import HfArgumentParser

from train_args.base import TrainArgs

TRAIN_ARGS_DIR = Path(__file__).resolve().parent.parent / "train_args"
DEFAULT_CONFIG = "default"


class ConfigError(ValueError):
    pass


def resolve_config_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = TRAIN_ARGS_DIR / f"{name_or_path}.py"
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in TRAIN_ARGS_DIR.glob("*.py") if p.stem not in ("__init__", "base"))
    raise ConfigError(f"config {name_or_path!r} is neither a file nor a ready config; ready configs: {', '.join(known)}")


def config_class(path: Path) -> type[TrainArgs]:
    """The TrainArgs subclass a train_args-style .py file defines (the last one, if it defines several)."""
    spec = importlib.util.spec_from_file_location(f"_dojo_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found = [v for v in vars(module).values()
             if isinstance(v, type) and issubclass(v, TrainArgs) and v.__module__ == module.__name__]
    if not found:
        raise ConfigError(f"{path}: defines no dataclass that subclasses train_args.base.TrainArgs")
    return found[-1]


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def config_defaults(path: Path) -> dict:
    """Field values a config file sets, validated against TrainArgs' field names."""
    if path.suffix == ".py":
        base = {f.name: _default(f) for f in dataclasses.fields(TrainArgs)}
        values = {f.name: _default(f) for f in dataclasses.fields(config_class(path))}
        return {k: v for k, v in values.items() if k in base and v != base[k]}
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {err}") from None
    elif path.suffix == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from None
    else:
        raise ConfigError(f"{path}: config files are .py, .yaml, .yml or .json")
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: must hold a mapping of field: value")
    known = {f.name for f in dataclasses.fields(TrainArgs)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {', '.join(unknown)} (see python main_train.py --help)")
    return values


def parse_args(argv: list[str] | None = None) -> TrainArgs:
    argv = list(sys.argv[1:] if argv is None else argv)
    # No config named: the default run, unless a model is named (then TrainArgs' own defaults, so the default
    # run's Etude-specific settings never leak into a run on another model).
    config = None if any(a.split("=")[0] == "--model_name_or_path" for a in argv) else DEFAULT_CONFIG
    if argv and not argv[0].startswith("-"):
        config = argv.pop(0)
    parser = HfArgumentParser(TrainArgs)
    parser.prog = "main_train.py"
    parser.usage = "python main_train.py [CONFIG] [--field value ...]   (CONFIG: a name in train_args/ or a file)"
    defaults = config_defaults(resolve_config_path(config)) if config else {}
    # argparse wants list-valued defaults as lists and dict ones as JSON strings, as on the command line
    parser.set_defaults(**{k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in defaults.items()})
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    return args
