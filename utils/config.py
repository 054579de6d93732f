"""Turn `python main_train.py [CONFIG] [--field value ...]` into one TrainArgs.

CONFIG is a ready config (a short name such as `qwen_lora`, or a path to a .py file in train_args/ style), or a
YAML/JSON file of field values. Its values become the parser's defaults, so any field can still be overridden on
the command line, and `--help` lists every field of TrainArgs with its help text.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

from transformers import HfArgumentParser

from train_args.base import ConfigError, TrainArgs

TRAIN_ARGS_DIR = Path(__file__).resolve().parent.parent / "train_args"
DEFAULT_CONFIG = "default"


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


# --help: TrainArgs' own fields first, in these groups (each starts at the named field, in declaration order), then
# the Trainer's other fields. The groups follow the blocks of train_args/base.py.
HELP_GROUPS = {"model_name_or_path": "model", "train_data_path": "data", "train_mode": "method",
               "padding_free": "fast path", "output_dir": "training (Trainer fields with defaults re-chosen here)",
               "stage": "preference training (stage dpo, kto, rm)"}


def group_help(parser) -> None:
    """Reorder --help so that a user meets our fields first, grouped, and the Trainer's hundreds after them."""
    by_dest = {a.dest: a for a in parser._actions}
    trainer_group = parser._action_groups[-1] if len(parser._action_groups) > 2 else parser._optionals
    groups, current = [], None
    for name in TrainArgs.__annotations__:
        if name in HELP_GROUPS:
            current = parser.add_argument_group(HELP_GROUPS[name])
            groups.append(current)
        action = by_dest.get(name)
        if action is None or current is None:
            continue
        for group in parser._action_groups:
            if action in group._group_actions and group is not current:
                group._group_actions.remove(action)
        current._group_actions.append(action)
    trainer_group.title = "other Trainer fields (transformers.TrainingArguments)"
    parser._action_groups = [g for g in parser._action_groups if g not in groups and g is not trainer_group] \
        + groups + [trainer_group]


def parse_args(argv: list[str] | None = None, check_files: bool = False) -> TrainArgs:
    """check_files: also check what the fields point to (model and tokenizer folders, data files, output_dir, LoRA
    target modules) before anything is loaded or written. Every bad field is reported in one ConfigError."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # No config named: the default run, unless a model is named (then TrainArgs' own defaults, so the default
    # run's Etude-specific settings never leak into a run on another model).
    config = None if any(a.split("=")[0] == "--model_name_or_path" for a in argv) else DEFAULT_CONFIG
    if argv and not argv[0].startswith("-"):
        config = argv.pop(0)
    parser = HfArgumentParser(TrainArgs)
    group_help(parser)
    parser.prog = "main_train.py"
    parser.usage = "python main_train.py [CONFIG] [--field value ...]   (CONFIG: a name in train_args/ or a file)"
    defaults = config_defaults(resolve_config_path(config)) if config else {}
    # argparse wants list-valued defaults as lists and dict ones as JSON strings, as on the command line
    parser.set_defaults(**{k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in defaults.items()})
    namespace, unknown = parser.parse_known_args(args=argv)
    if unknown:
        raise ConfigError(f"unknown argument(s) {' '.join(unknown)} (see python main_train.py --help)")
    values = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(TrainArgs) if f.init}
    problems = file_problems(SimpleNamespace(**values)) if check_files else []
    try:
        args = TrainArgs(**values)
    except ConfigError as err:
        raise ConfigError(err.problems + problems) from None
    if problems:
        raise ConfigError(problems)
    return args


# --- what the fields point to -----------------------------------------------------------------------------------
MODEL_FILES = ("config.json",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# module types peft can adapt (a name matching anything else, e.g. a whole decoder layer, is refused by peft)
ADAPTABLE = ("Linear", "Embedding", "Conv1d", "Conv2d", "Conv3d", "Conv1D", "MultiheadAttention")


def file_problems(a) -> list[str]:
    """'field: what is wrong' for fields naming what does not exist or cannot be used. Reads folders and the
    model's config.json only; nothing is loaded or written."""
    model = source_problems("model_name_or_path", a.model_name_or_path, MODEL_FILES)
    problems = model + (source_problems("tokenizer_name_or_path", a.tokenizer_name_or_path, TOKENIZER_FILES)
                        if a.tokenizer_name_or_path else [])
    for name in ("train_data_path", "eval_data_path", "score_data_path"):
        paths = getattr(a, name) or []
        problems += [f"{name}: {p} does not exist" for p in ([paths] if isinstance(paths, str) else paths)
                     if not Path(p).exists()]
    problems += output_dir_problems(a.output_dir)
    if not model and a.train_mode in ("lora", "qlora") and a.lora_target_modules:
        problems += target_module_problems(a)
    return problems


def source_problems(field: str, value: str, marker_files: tuple[str, ...]) -> list[str]:
    """A local folder holding one of marker_files, a preset, or a hub id that is cached or downloadable."""
    from utils.model_source import resolve_model_source
    if resolve_model_source(value).from_scratch:
        return []
    path = Path(value).expanduser()
    if path.is_dir():
        if any((path / f).is_file() for f in marker_files):
            return []
        return [f"{field}: folder {value} has no {' or '.join(marker_files)}"]
    if path.exists() or value.startswith((".", "/", "~")) or value.count("/") > 1:
        return [f"{field}: no folder {value}"]
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError
    try:
        if isinstance(try_to_load_from_cache(value, marker_files[0]), str):
            return []
    except HFValidationError:  # not a hub id either
        return [f"{field}: no folder {value}"]
    local = f"no folder {value}, and as a hub id it"
    if constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return [f"{field}: {local} cannot be downloaded offline (HF_HUB_OFFLINE): set --{field} to a local folder"]
    try:  # one short request instead of the loaders' retries, which take a minute to fail without a network
        model_info(value, timeout=10)
    except GatedRepoError:
        return [f"{field}: {local} is gated: accept its terms on the hub and log in (hf auth login), or set "
                f"--{field} to a local folder"]
    except RepositoryNotFoundError:
        return [f"{field}: {local} names no model on the hub"]
    except Exception as err:  # no network, gated model, ...: the loader would fail the same way, later
        return [f"{field}: {local} cannot be downloaded ({type(err).__name__}: {err}); set --{field} to a local "
                "folder"]
    return []


def output_dir_problems(output_dir: str | None) -> list[str]:
    """output_dir must be a folder that exists or can be created, and be writable."""
    if output_dir is None:
        return []
    out = Path(output_dir)
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return [f"output_dir: {existing} is a file, so {out} cannot be a folder"]
    if not os.access(existing, os.W_OK | os.X_OK):  # also false on a read-only file system, even for root
        return [f"output_dir: {existing} is not writable"]
    return []


def target_module_problems(a) -> list[str]:
    """Every name in lora_target_modules must match an adaptable module of the model (built on the meta device
    from its config: no weights are read), by peft's rule: the module's name is the target or ends in '.target'."""
    import torch
    from transformers import AutoModelForCausalLM

    from utils.model_source import resolve_model_source
    config = resolve_model_source(a.model_name_or_path, a.trust_remote_code).config()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=a.trust_remote_code)
    names = [n for n, m in model.named_modules() if type(m).__name__ in ADAPTABLE]
    unknown = [t for t in a.lora_target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if not unknown:
        return []
    known = sorted({n.rsplit(".", 1)[-1] for n in names})
    return [f"lora_target_modules: {', '.join(map(repr, unknown))} names no adaptable module of "
            f"{type(model).__name__} (its modules: {', '.join(known)})"]
