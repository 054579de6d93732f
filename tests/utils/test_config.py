"""utils/config.py: every ready config in train_args/ loads with fields of its declared types, command-line flags and
YAML/JSON files override them, unknown fields are refused, and --help lists every field."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import typing

import pytest

from tests.conftest import REPO
from train_args.base import TrainArgs
from utils.config import TRAIN_ARGS_DIR, config_class, parse_args


def _check_type(value, annotation) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is typing.Any or annotation is None:
        return True
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_check_type(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_check_type(v, typing.get_args(annotation)[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


CONFIGS = sorted(p for p in TRAIN_ARGS_DIR.glob("*.py") if p.stem not in ("__init__", "base"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_ready_config_has_fields_of_the_declared_types(path):
    """A trailing comma (`lora_rank: int = 8,`) makes a tuple; LLM-Dojo shipped that bug."""
    cls = config_class(path)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if default is dataclasses.MISSING or f.name not in hints:
            continue
        assert _check_type(default, hints[f.name]), f"{path.name}: {f.name} = {default!r} is not {hints[f.name]}"
    args = parse_args([path.stem, "--output_dir", "/tmp/unused"])
    assert isinstance(args, TrainArgs) and isinstance(args.lora_rank, int)


def test_cli_overrides_and_yaml_and_json_configs(tmp_path):
    args = parse_args(["qwen_lora", "--lora_rank", "4", "--max_steps", "7", "--train_data_path", "a.jsonl", "b"])
    assert (args.lora_rank, args.max_steps, args.train_data_path, args.template_name) == (4, 7, ["a.jsonl", "b"],
                                                                                           "qwen")
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("model_name_or_path: /m\nlora_rank: 8\ntrain_mode: qlora\n")
    args = parse_args([str(yaml_file), "--lora_alpha", "5"])
    assert (args.model_name_or_path, args.lora_rank, args.train_mode, args.lora_alpha) == ("/m", 8, "qlora", 5)
    json_file = tmp_path / "c.json"
    json_file.write_text(json.dumps({"lora_rnak": 8}))
    from utils.config import ConfigError
    with pytest.raises(ConfigError, match="unknown field"):
        parse_args([str(json_file)])


def test_help_lists_every_field():
    proc = subprocess.run([sys.executable, "main_train.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0
    for name in ("--model_name_or_path", "--template_name", "--lora_target_modules", "--loraplus_lr_ratio",
                 "--init_lora_weights", "--learning_rate", "--resume_from_checkpoint"):
        assert name in proc.stdout

