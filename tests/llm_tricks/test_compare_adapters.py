"""Smoke test of llm_tricks/compare_adapters.py: every method trains a few steps on real data, sane numbers out."""

import math
from pathlib import Path

import pytest

from llm_tricks import compare_adapters

DATA = compare_adapters.REPO.parent / "shared" / "assets" / "data" / "sft" / "alpaca_en_demo.jsonl"


@pytest.mark.skipif(
    not (DATA.exists() and compare_adapters.DEFAULT_TOKENIZER.exists()), reason="../shared assets absent"
)
def test_all_methods_run_and_report(tmp_path: Path, capsys):
    small = tmp_path / "alpaca_small.jsonl"
    small.write_text("\n".join(DATA.read_text(encoding="utf-8").splitlines()[:16]) + "\n", encoding="utf-8")
    results = compare_adapters.main([
        "--data", str(small), "--steps", "3", "--batch-size", "2", "--seq-len", "32", "--eval-examples", "4",
        "--hidden", "32", "--intermediate", "64", "--layers", "1", "--warmup", "1", "--loss-window", "2",
    ])
    assert [r["method"] for r in results] == compare_adapters.METHODS
    by_method = {r["method"]: r for r in results}
    for r in results:
        assert math.isfinite(r["train_loss"]) and math.isfinite(r["eval_loss"]) and r["ms_per_step"] > 0
    # same rank and targets: same adapter size, except DoRA's extra magnitude vector (one value per output row)
    assert by_method["lora"]["trainable"] == by_method["rslora"]["trainable"] == by_method["pissa"]["trainable"]
    assert by_method["lora"]["trainable"] == by_method["lora_plus"]["trainable"] < by_method["dora"]["trainable"]
    assert "| lora_plus |" in capsys.readouterr().out
