"""The silent failures of fine-tuning, each made impossible and proven here."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch

import main_train
from tests.conftest import REPO, TOY_RECORDS, train_argv, write_jsonl
from train_args.base import TrainArgs
from utils.config import TRAIN_ARGS_DIR, config_class, parse_args
from utils.data import DataError, load_conversations


def final_loss(trainer) -> float:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h][-1]


def params(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def test_resume_equals_straight_run(tiny_model, toy_data, tmp_path):
    """N steps, crash, resume N steps == 2N straight (weights, optimizer, scheduler, RNG, data position)."""
    model_dir = tiny_model("qwen")
    common = ["--template_name", "qwen", "--max_steps", "6", "--save_steps", "3", "--lr_scheduler_type", "cosine",
              "--lora_dropout", "0.1"]
    straight = main_train.main(train_argv(model_dir, toy_data, tmp_path / "a", *common))
    # a crashed run leaves checkpoint-3; a half-written checkpoint-6 (no trainer_state.json) must be skipped
    crashed = tmp_path / "b"
    shutil.copytree(tmp_path / "a" / "checkpoint-3", crashed / "checkpoint-3")
    (crashed / "checkpoint-6").mkdir()
    (crashed / "checkpoint-6" / "adapter_model.safetensors").write_bytes(b"partial")
    resumed = main_train.main(train_argv(model_dir, toy_data, crashed, *common,
                                         "--resume_from_checkpoint", "true"))
    assert abs(final_loss(resumed) - final_loss(straight)) < 1e-5
    for name, p in params(straight).items():
        torch.testing.assert_close(params(resumed)[name], p, atol=1e-5, rtol=0)


def test_batch_times_accumulation_is_invariant(tiny_model, tmp_path):
    """4 x 1 and 2 x 2 give the same step: the loss is normalised by supervised tokens over the whole window,
    not averaged per micro-batch (samples here have very different numbers of supervised tokens)."""
    records = [{"instruction": f"q{i}", "output": "word " * (1 + 7 * (i % 3))} for i in range(8)]
    data = write_jsonl(tmp_path / "d.jsonl", records)
    model_dir = tiny_model("qwen")
    runs = []
    for batch, accum in ((4, 1), (2, 2)):
        runs.append(main_train.main(train_argv(
            model_dir, data, tmp_path / f"o{batch}", "--template_name", "qwen", "--train_mode", "full",
            "--max_steps", "2", "--per_device_train_batch_size", str(batch),
            "--gradient_accumulation_steps", str(accum), "--seed", "1", "--data_seed", "1")))
    a, b = params(runs[0]), params(runs[1])
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)
    assert abs(final_loss(runs[0]) - final_loss(runs[1])) < 1e-4


def test_samples_without_supervised_tokens_are_dropped_and_counted(tiny_model, tmp_path, capsys):
    long_prompt = {"instruction": "x " * 200, "output": "answer"}
    data = write_jsonl(tmp_path / "d.jsonl", TOY_RECORDS + [long_prompt] * 3)
    main_train.main(train_argv(tiny_model("qwen"), data, tmp_path / "o", "--template_name", "qwen",
                               "--dry_run", "true"))
    assert "dropped 3 of 11: no assistant tokens left after truncation to 64" in capsys.readouterr().out


def test_dry_run_predicts_peak_memory_without_loading_weights(tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", TOY_RECORDS)
    assert main_train.main(train_argv(tiny_model("qwen"), data, tmp_path / "o", "--template_name", "qwen",
                                      "--dry_run", "true")) is None
    out = capsys.readouterr().out
    assert re.search(r"predicted peak GPU memory \d+\.\d+ GB for the largest micro-batch", out)
    for part in ("weights", "optimizer", "activations", "workspace"):
        assert part in out
    assert not (tmp_path / "o").exists()


def test_dry_run_sizes_the_prediction_by_the_longest_piece(tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", TOY_RECORDS)
    argv = train_argv(tiny_model("qwen"), data, tmp_path / "o", "--template_name", "qwen", "--dry_run", "true",
                      "--padding_free", "true", "--per_device_train_batch_size", "4")
    main_train.main(argv)
    whole = re.search(r"largest micro-batch \(1 rows, (\d+) tokens\)", capsys.readouterr().out)
    main_train.main(argv + ["--micro_batch_max_tokens", "30"])
    piece = re.search(r"largest piece \(1 rows, (\d+) tokens\)", capsys.readouterr().out)
    assert whole and piece and int(piece.group(1)) < int(whole.group(1))


def test_memory_budget_is_applied_before_the_dry_run_prediction(tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", TOY_RECORDS)
    argv = train_argv(tiny_model("qwen"), data, tmp_path / "o", "--template_name", "qwen", "--dry_run", "true",
                      "--padding_free", "true", "--memory_budget_gb", "80")
    main_train.main(argv)
    assert "memory_budget_gb 80: the whole micro-batch fits" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"memory_budget_gb 0.0001: even a piece of .* does not fit"):
        main_train.main(argv[:-1] + ["0.0001"])
    assert not (tmp_path / "o").exists()


def test_dry_run_on_a_used_output_dir_warns_and_touches_nothing(tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", TOY_RECORDS)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("earlier results")
    main_train.main(train_argv(tiny_model("qwen"), data, tmp_path / "o", "--template_name", "qwen", "--dry_run", "true"))
    assert "a real run would stop here" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["keep.txt"]


def test_all_samples_unsupervised_refuses_to_train(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "x " * 200, "output": "a"}] * 4)
    with pytest.raises(DataError, match="no usable samples"):
        main_train.main(train_argv(tiny_model("qwen"), data, tmp_path / "o", "--template_name", "qwen"))
    assert not (tmp_path / "o").exists()


BAD_DATA = {
    "invalid_json": ('{"instruction": "a", "output": "b"}\n{"instruction": oops}\n', 2, "invalid JSON"),
    "missing_key": ('{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n', 2, "field 'output' is missing"),
    "unknown_role": ('{"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}\n', 1,
                     "field 'messages[1].role' has unknown role 'bot'"),
    "empty_content": ('{"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "b"}]}\n',
                      1, "field 'messages[0].content' is empty"),
    "non_string": ('{"conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "b"}]}\n', 1,
                   "field 'conversations[0].value' must be a string"),
    "alternation": ('{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, '
                    '{"role": "assistant", "content": "c"}]}\n', 1, "broken alternation"),
    "special_text": ('{"instruction": "a <|im_end|> b", "output": "c"}\n', 1, "special-token text '<|im_end|>'"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_malformed_data_fails_with_file_line_and_field(case, tiny_model, tmp_path):
    text, line, message = BAD_DATA[case]
    data = tmp_path / "bad.jsonl"
    data.write_text(text, encoding="utf-8")
    out = tmp_path / "o"
    with pytest.raises(DataError) as err:
        main_train.main(train_argv(tiny_model("qwen"), data, out, "--template_name", "qwen"))
    assert f"{data}:{line}:" in str(err.value) and message in str(err.value)
    assert not out.exists()


def test_malformed_data_exits_nonzero_from_the_command_line(tiny_model, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"instruction": "a"}\n', encoding="utf-8")
    proc = subprocess.run([sys.executable, "main_train.py", *train_argv(tiny_model("qwen"), data, tmp_path / "o")],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"error: {data}:1: field 'output' is missing" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o").exists()


def test_non_empty_output_dir_is_refused(tiny_model, toy_data, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        main_train.main(train_argv(tiny_model("qwen"), toy_data, out, "--template_name", "qwen"))
    assert (out / "precious.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1


def test_non_finite_loss_stops_the_run(tiny_model, toy_data, tmp_path):
    from utils.trainer import NonFiniteLossError
    with pytest.raises(NonFiniteLossError, match="loss is nan"):
        main_train.main(train_argv(tiny_model("qwen"), toy_data, tmp_path / "o", "--template_name", "qwen",
                                   "--train_mode", "full", "--learning_rate", "1e30", "--max_grad_norm", "0"))


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


def test_load_conversations_reads_the_three_shapes(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"instruction": "i", "input": "x", "output": "o", "system": "s"}])
    write_jsonl(tmp_path / "b.jsonl", [{"conversations": [{"from": "human", "value": "h"},
                                                          {"from": "gpt", "value": "g"}], "system": "s"}])
    (tmp_path / "c.json").write_text(json.dumps([{"messages": [{"role": "user", "content": "u"},
                                                              {"role": "assistant", "content": "a"}]}]))
    convs = load_conversations([str(tmp_path)])
    assert [c.messages for c in convs] == [
        [{"role": "system", "content": "s"}, {"role": "user", "content": "i\nx"},
         {"role": "assistant", "content": "o"}],
        [{"role": "system", "content": "s"}, {"role": "user", "content": "h"}, {"role": "assistant", "content": "g"}],
        [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]]
    assert convs[0].source.endswith("a.jsonl:1") and convs[2].source.endswith("c.json:item 0")


def test_loraplus_gives_b_a_larger_learning_rate(tiny_model, toy_data, tmp_path):
    trainer = main_train.main(train_argv(tiny_model("qwen"), toy_data, tmp_path / "o", "--template_name", "qwen",
                                         "--loraplus_lr_ratio", "16", "--max_steps", "1"))
    lrs = {}
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            name = next(n for n, q in trainer.model.named_parameters() if q is p)
            lrs[name] = group["lr"]
    a = {v for k, v in lrs.items() if "lora_A" in k}
    b = {v for k, v in lrs.items() if "lora_B" in k}
    assert len(a) == len(b) == 1 and b.pop() == pytest.approx(16 * a.pop())


def test_merge_matches_adapter_logits(tiny_model, toy_data, tmp_path):
    from transformers import AutoModelForCausalLM
    from peft import PeftModel
    from utils.merge_lora import main as merge_main
    model_dir = tiny_model("qwen")
    main_train.main(train_argv(model_dir, toy_data, tmp_path / "ad", "--template_name", "qwen"))
    merge_main(["--adapter_path", str(tmp_path / "ad"), "--output_dir", str(tmp_path / "m"), "--dtype", "float32"])
    ids = torch.randint(0, 1000, (1, 12))
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m")(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        adapter = PeftModel.from_pretrained(base, tmp_path / "ad")(input_ids=ids).logits
    assert (merged - adapter).abs().max() < 1e-4
    assert (tmp_path / "m" / "generation_config.json").is_file()


def test_qlora_adapter_merges_into_the_unquantized_base(tiny_model, toy_data, tmp_path):
    from utils.merge_lora import merge
    model_dir = tiny_model("qwen")
    main_train.main(train_argv(model_dir, toy_data, tmp_path / "ad", "--template_name", "qwen",
                               "--train_mode", "qlora"))
    diff = merge(str(tmp_path / "ad"), str(tmp_path / "m"), dtype="float32")
    assert diff < 1e-4
    from transformers import AutoConfig
    assert getattr(AutoConfig.from_pretrained(tmp_path / "m"), "quantization_config", None) is None


def test_two_ranks_with_torchrun_gloo(tiny_model, toy_data, tmp_path):
    """DDP on CPU: 2 ranks train, only rank 0 writes."""
    out = tmp_path / "o"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         "main_train.py", *train_argv(tiny_model("qwen"), toy_data, out, "--template_name", "qwen",
                                      "--ddp_backend", "gloo", "--max_steps", "2")],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("[dojo] verified") == 1
    assert (out / "adapter_model.safetensors").is_file()


def test_tokenizer_larger_than_the_model_is_refused(tiny_model, toy_data, tmp_path):
    """A separate tokenizer whose vocabulary exceeds the model's embeddings is a mismatch, not a resize."""
    with pytest.raises(ValueError, match="do not belong together"):
        main_train.main(train_argv(tiny_model("phi3"), toy_data, tmp_path / "o", "--template_name", "qwen",
                                   "--tokenizer_name_or_path", str(tiny_model("qwen"))))
