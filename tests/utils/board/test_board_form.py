"""The board's Train form and runner without a browser: the argv it builds, the checks before a start, the stop."""
from __future__ import annotations

import time

import pytest

from utils.board import form
from utils.board.runner import BoardError, TrainRun, build_argv, parse_extra, validate


def _values(**changes):
    names = [f.name for f in form.own_fields()]
    values = form.preset_values("default")
    for name, value in changes.items():
        values[names.index(name)] = value
    return values


def test_form_covers_every_trainargs_field_of_our_block_with_its_help():
    import dataclasses

    from train_args.base import TrainArgs
    own = set(TrainArgs.__dict__["__annotations__"])
    fields = form.own_fields()
    assert {f.name for f in fields} == own and all(f.metadata.get("help") for f in fields)
    assert "qwen_lora" in form.presets() and "base" not in form.presets()
    assert len(own) < len(dataclasses.fields(TrainArgs))  # the HF Trainer's own fields go through 'extra fields'


def test_form_argv_holds_only_the_changed_fields_as_separate_arguments():
    fields = form.changed_fields("default", _values(max_len="32", train_data_path="a.jsonl 'b c.jsonl'",
                                                    trust_remote_code=True))
    assert fields == {"max_len": "32", "train_data_path": ["a.jsonl", "b c.jsonl"], "trust_remote_code": "true"}
    argv = build_argv("default", {**fields, **parse_extra("--max_steps 5")})
    assert argv[1:] == ["default", "--trust_remote_code", "true", "--train_data_path", "a.jsonl", "b c.jsonl",
                        "--max_len", "32", "--max_steps", "5"]


@pytest.mark.parametrize("extra", ["--no_such_field 1", "rm -rf /", "--max_steps", "; --max_steps 5"])
def test_extra_fields_accept_only_trainargs_flags_with_a_value(extra):
    with pytest.raises(BoardError, match="extra fields line 1"):
        parse_extra(extra)


def test_validation_gives_the_cli_errors_before_anything_is_written(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "hi"}\n')
    with pytest.raises(BoardError, match="invalid int value: 'x'"):
        validate(build_argv("default", {"max_len": "x", "output_dir": str(tmp_path / "o")}))
    with pytest.raises(BoardError, match=f"{bad}:1: field 'output' is missing"):
        validate(build_argv("default", {"train_data_path": [str(bad)], "output_dir": str(tmp_path / "o")}))
    with pytest.raises(BoardError, match="use_dora: needs train_mode lora"):
        validate(build_argv("default", {"use_dora": "true", "output_dir": str(tmp_path / "o")}))
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    with pytest.raises(BoardError, match="is not empty"):
        validate(build_argv("default", {"output_dir": str(tmp_path / "used")}))
    assert not (tmp_path / "o").exists()


def test_train_tab_starts_only_ready_configs_never_a_file_path(tmp_path):
    from utils.board.tab_train import TrainTab
    script = tmp_path / "evil.py"
    script.write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write('ran')\n")
    tab = TrainTab(tmp_path / "root")
    command, status = tab.start(str(script), "", *form.preset_values("default"))
    assert command == "" and "is not a ready config" in status and "Nothing was started" in status
    assert tab.run is None and not (tmp_path / "ran").exists()


def test_board_refuses_another_host_without_a_password():
    from utils.board.__main__ import parse_args
    assert parse_args([]).host == "127.0.0.1"
    with pytest.raises(SystemExit):
        parse_args(["--host", "0.0.0.0"])
    assert parse_args(["--host", "0.0.0.0", "--password", "s3cret"]).password == "s3cret"


def test_stop_ends_the_run_with_a_complete_resumable_checkpoint(tmp_path):
    """Stop sends SIGTERM; with enable_jit_checkpoint the Trainer saves the step it is in and training ends."""
    from utils.progress import read_progress
    from utils.run_folder import last_checkpoint
    out = tmp_path / "o"
    argv = build_argv("default", {"output_dir": str(out), "max_steps": "500", "per_device_train_batch_size": "4",
                                  "score_samples": "0", "eval_steps": "1000", "save_steps": "1000",
                                  "per_device_eval_batch_size": "64",
                                  "report_to": "none", "disable_tqdm": "true"})
    validate(argv)
    run = TrainRun(argv, str(out), tmp_path / "root")
    deadline = time.time() + 240
    while not any(p.get("step", 0) >= 1 for p in read_progress(out)):
        assert run.running and time.time() < deadline, run.log_text()[-3000:]
        time.sleep(0.5)
    run.stop()
    while run.running:
        assert time.time() < deadline, run.log_text()[-3000:]
        time.sleep(0.5)
    assert run.proc.returncode == 0, run.log_text()[-3000:]
    checkpoint = last_checkpoint(str(out))  # complete: trainer_state.json written last
    assert checkpoint is not None and int(checkpoint.rsplit("-", 1)[1]) < 500
    assert run.state().startswith("stopped: resume")
    from utils.board.runs import summary
    assert summary(tmp_path / "root", out)["status"].startswith("stopped from the board (resumable")


def test_python_m_utils_board_serves_the_page_on_localhost_and_prints_its_address(tmp_path):
    import socket
    import subprocess
    import sys
    import urllib.request

    from tests.conftest import REPO
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**__import__("os").environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "-m", "utils.board", "--port", str(port), "--output_root",
                             str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    try:
        lines = []
        for line in proc.stdout:  # the address line comes once the server listens
            lines.append(line)
            if line.startswith("Dojo board: "):
                break
        assert lines and lines[-1].startswith(f"Dojo board: http://127.0.0.1:{port}"), "".join(lines)[-3000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200 and "Dojo board" in page.read().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
