"""utils/tiny_model.py: `python -m utils.tiny_model` writes a tiny random model that transformers loads, and never
overwrites a folder."""
from __future__ import annotations

import pytest

from utils.tokenizer import load_tokenizer


def test_tiny_model_command_writes_a_loadable_model_and_never_overwrites(tmp_path, capsys):
    from tests.conftest import shared_path
    from utils import tiny_model
    tokenizer = shared_path("tokenizers", "qwen2.5")
    tiny_model.main(["--family", "qwen", "--tokenizer", str(tokenizer), "--output_dir", str(tmp_path / "m")])
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert model.config.hidden_size == 16 and model.config.vocab_size >= len(load_tokenizer(str(tmp_path / "m")))
    before = sorted(p.name for p in (tmp_path / "m").iterdir())
    with pytest.raises(SystemExit) as exit_:
        tiny_model.main(["--family", "qwen", "--tokenizer", str(tokenizer), "--output_dir", str(tmp_path / "m")])
    assert exit_.value.code == 2 and "error: --output_dir" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == before
