"""Every bad value a user can give stops the run before anything is loaded or written, all of them at once."""
from __future__ import annotations

import pytest

import main_train
from tests.conftest import train_argv
from train_args.base import TrainArgs
from utils.config import ConfigError, parse_args

# field -> (extra flags, text of the error line). Each of these used to stop only after train_args.json was written
# (so the corrected rerun was refused as "not empty"), or to run the whole job and crash, or to succeed wrongly
# (max_len -5 cut the last 5 tokens of every sample, the end-of-turn token included).
BAD_VALUES = {
    "lora_rank_0": (["--lora_rank", "0"], "lora_rank: must be >= 1"),
    "lora_rank_negative": (["--lora_rank", "-1"], "lora_rank: must be >= 1"),
    "lora_dropout": (["--lora_dropout", "1.5"], "lora_dropout: must be in [0, 1)"),
    "learning_rate": (["--learning_rate", "-0.0001"], "learning_rate: must be > 0"),
    "batch_size": (["--per_device_train_batch_size", "0"], "per_device_train_batch_size: must be >= 1"),
    "torch_dtype": (["--torch_dtype", "float64"], "torch_dtype: must be one of auto, bfloat16, float16, float32"),
    "target_module": (["--lora_target_modules", "q_proj", "q_prj"],
                      "lora_target_modules: 'q_prj' names no adaptable module of Qwen2ForCausalLM"),
    "init_lora_weights": (["--init_lora_weights", "kaiming"], "init_lora_weights: must be default, gaussian"),
    "loraplus_with_full": (["--loraplus_lr_ratio", "16", "--train_mode", "full"],
                           "loraplus_lr_ratio: must be > 0, with train_mode lora or qlora"),
    "lora_alpha": (["--lora_alpha", "0"], "lora_alpha: must be > 0"),
    "num_train_epochs": (["--num_train_epochs", "-1", "--max_steps", "-1"], "num_train_epochs: must be > 0"),
    "gradient_accumulation_steps": (["--gradient_accumulation_steps", "0"],
                                    "gradient_accumulation_steps: must be >= 1"),
    "max_len": (["--max_len", "-5"], "max_len: must be >= 1"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_value_exits_2_naming_the_field_and_writes_nothing(case, tiny_model, toy_data, tmp_path, capsys):
    flags, message = BAD_VALUES[case]
    out = tmp_path / "o"
    code = main_train.cli(train_argv(tiny_model("qwen"), toy_data, out, "--template_name", "qwen", *flags))
    assert code == 2 and f"error: {message}" in capsys.readouterr().err
    assert not out.exists()


def test_every_bad_field_is_reported_at_once(tiny_model, toy_data, tmp_path, capsys):
    flags = [f for case in ("lora_rank_0", "lora_dropout", "target_module", "max_len") for f in BAD_VALUES[case][0]]
    code = main_train.cli(train_argv(tiny_model("qwen"), toy_data, tmp_path / "o", *flags,
                                     "--eval_data_path", str(tmp_path / "missing.jsonl")))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    for field in ("lora_rank", "lora_dropout", "lora_target_modules", "max_len", "eval_data_path"):
        assert f"error: {field}: " in err
    assert not (tmp_path / "o").exists()


def test_readme_dry_run_offline_names_the_fields_to_set(capsys, tmp_path, monkeypatch):
    """README's first command, offline: the ready config's model is a hub id and its data a placeholder."""
    from huggingface_hub import try_to_load_from_cache
    if try_to_load_from_cache("Qwen/Qwen2.5-0.5B-Instruct", "config.json"):
        pytest.skip("Qwen2.5-0.5B-Instruct is in this machine's hub cache")
    monkeypatch.chdir(tmp_path)  # where no data/my_sft.jsonl was made
    assert main_train.cli(["qwen_lora", "--dry_run", "true"]) == 2
    err = capsys.readouterr().err
    assert "error: model_name_or_path: no folder Qwen/Qwen2.5-0.5B-Instruct, and as a hub id it cannot be " \
           "downloaded offline" in err
    assert "error: train_data_path: data/my_sft.jsonl does not exist" in err
    assert "Traceback" not in err


def test_missing_model_folder_is_named_plainly(tmp_path, toy_data):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as err:
        parse_args(train_argv(tmp_path / "absent", toy_data, tmp_path / "o"), check_files=True)
    assert f"model_name_or_path: no folder {tmp_path / 'absent'}" in err.value.problems
    with pytest.raises(ConfigError, match="model_name_or_path: folder .*empty has no config.json"):
        parse_args(train_argv(tmp_path / "empty", toy_data, tmp_path / "o"), check_files=True)


def test_constructing_train_args_reports_every_bad_field():
    with pytest.raises(ConfigError) as err:
        TrainArgs(output_dir="unused", lora_rank=0, max_len=0, micro_batch_max_tokens=8, report_to="none")
    assert [p.split(":")[0] for p in err.value.problems] == ["max_len", "lora_rank", "micro_batch_max_tokens"]


def test_resume_false_is_not_a_resume():
    assert parse_args(["--output_dir", "o", "--resume_from_checkpoint", "false"]).resume_from_checkpoint is None
    assert parse_args(["--output_dir", "o", "--resume_from_checkpoint", "True"]).resume_from_checkpoint == "true"


def test_help_lists_our_fields_first_grouped_and_the_trainers_after(capsys):
    """--help: a user meets model, data, method, fast path, training and preference fields before the Trainer's
    hundreds (they came first, our fields from line 470 on)."""
    with pytest.raises(SystemExit) as stop:
        parse_args(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    titles = ["model:", "data:", "method:", "fast path:", "training (", "preference training", "other Trainer fields"]
    positions = [text.index("\n" + t) for t in titles]  # group titles start a line
    assert positions == sorted(positions)
    assert text.index("--model_name_or_path") < text.index("\ndata:") < text.index("--train_data_path")
    assert text.index("--learning_rate") < text.index("\nother Trainer fields") < text.index("--adam_beta1")
