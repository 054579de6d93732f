"""20-step LoRA runs of a tiny Qwen2 with the real Qwen tokenizer on the real data sets in ../shared."""
from __future__ import annotations

import re

import pytest

import main_train
from tests.conftest import shared_path, train_argv


@pytest.mark.parametrize("relpath,extra", [
    (("data", "sft", "alpaca_zh_demo.jsonl"), []),
    # this scraped file has a few broken records (e.g. 17 empty user turns at line 59): skipped and counted
    (("data", "multiturn", "sharegpt_zh_1K_format.jsonl"), ["--invalid_records", "skip"]),
])
def test_twenty_step_lora_on_real_data(relpath, extra, tiny_model, tmp_path, capsys):
    data = shared_path(*relpath)
    trainer = main_train.main(train_argv(tiny_model("qwen"), data, tmp_path / "o", "--template_name", "qwen",
                                         "--max_steps", "20", "--max_len", "256", "--logging_steps", "5",
                                         "--learning_rate", "0.005", *extra))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert trainer.state.global_step == 20 and all(0 < x < 20 for x in losses)
    assert losses[-1] < losses[0]
    out = capsys.readouterr().out
    assert "[dojo] verified" in out
    if extra:
        assert re.search(r"skipped \d+ invalid records", out) and "sharegpt_zh_1K_format.jsonl:" in out
