"""`python -m chat_template list` and `show`, run as a user runs them (subprocess, from the repository root)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chat_template import TEMPLATES, encode
from chat_template.__main__ import main

REPO = Path(__file__).resolve().parents[2]
# the Qwen2.5 folder's own template is the Qwen2.5 variant of qwen: its default system, as training uses it
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def run_cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "chat_template", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    records = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                      {"role": "user", "content": "再加一？"}, {"role": "assistant", "content": "五。"}]},
    ]
    path = tmp_path_factory.mktemp("cli") / "chat.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_list_prints_every_template():
    result = run_cli("list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["name", "families", "stop"]
    for name, template in TEMPLATES.items():
        row = next(line for line in lines if line.split()[0] == name)
        assert template.stop_tokens[0].replace("{eos}", "<tokenizer eos>") in row
    assert "no (raises)" in next(line for line in lines if line.startswith("gemma"))


def test_show_marks_the_supervised_tokens(data_file, template_tokenizer, shared_assets):
    folder = shared_assets / "tokenizers" / "qwen2.5"
    result = run_cli("show", "--template", "qwen", "--tokenizer", str(folder), "--data", str(data_file),
                     "--index", "1", "--color", "never")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                {"role": "user", "content": "再加一？"}, {"role": "assistant", "content": "五。"}]
    enc = encode(messages, template_tokenizer("qwen"), "qwen", default_system=QWEN_SYSTEM)
    supervised = sum(label != -100 for label in enc["labels"])
    assert "chat.jsonl:2 (index 1)" in out
    assert f"total {len(enc['input_ids'])}, supervised {supervised} " in out
    assert "<|im_start|>assistant\n[[4<|im_end|>]]\n<|im_start|>user\n再加一？<|im_end|>\n" in out
    assert "<|im_start|>assistant\n[[五。<|im_end|>]]\n" in out
    assert f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>" in out  # nothing of the prompt is marked
    body = out.split("---\n")[1]
    assert body.count("[[") == body.count("]]") == 2


def test_show_truncates_like_training(data_file, template_tokenizer, shared_assets, capsys, monkeypatch):
    """In-process (main()), with the session's tokenizer, so no second tokenizer load."""
    import chat_template.loading

    folder = shared_assets / "tokenizers" / "qwen2.5"
    monkeypatch.setattr(chat_template.loading, "load_tokenizer_folder", lambda path: template_tokenizer("qwen"))
    full = len(encode([{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                       {"role": "user", "content": "再加一？"}, {"role": "assistant", "content": "五。"}],
                      template_tokenizer("qwen"), "qwen", default_system="Be brief.")["input_ids"])
    assert main(["show", "--template", "qwen", "--tokenizer", str(folder), "--data", str(data_file), "--index", "1",
                 "--max_len", "30", "--color", "never", "--tokens", "--default_system", "Be brief."]) == 0
    out = capsys.readouterr().out
    assert f"total 30, supervised 2 (6.7%), truncated from {full} by --max_len 30" in out
    body = out.split("---\n")[1]
    assert "[[4<|im_end|>]]\n<|im_start|>user\n" in body and "五" not in body and body.count("[[") == 1
    positions = [line.split()[0] for line in out.split("--- end ---\n")[1].splitlines()[1:]]
    assert positions == [str(i) for i in range(30)]  # --tokens lists every kept token


def test_show_refuses_an_index_out_of_range(data_file, capsys):
    assert main(["show", "--tokenizer", "unused", "--data", str(data_file), "--index", "2"]) == 2
    assert "holds 2 samples" in capsys.readouterr().err


def test_show_runs_from_any_folder_and_imports_nothing_of_utils(data_file, shared_assets, tmp_path):
    """`python -m chat_template show` from a folder outside the repository, with chat_template the only package of
    the repository on the path and a `utils` that refuses to be imported: the package stands on its own."""
    path = tmp_path / "path"
    (path / "utils").mkdir(parents=True)
    (path / "utils" / "__init__.py").write_text("raise ImportError('chat_template imported utils')\n")
    (path / "chat_template").symlink_to(REPO / "chat_template")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {**os.environ, "PYTHONPATH": str(path), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, "-m", "chat_template", "show", "--tokenizer",
                             str(shared_assets / "tokenizers" / "qwen2.5"), "--data", str(data_file), "--color",
                             "never"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "template  qwen (" in result.stdout and "[[Hello!<|im_end|>]]" in result.stdout
