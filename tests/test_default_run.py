"""The default command (python main_train.py) runs offline; here shortened to a few steps."""
import main_train


def test_default_config_runs_offline(tmp_path, capsys):
    trainer = main_train.main(["--output_dir", str(tmp_path / "o"), "--max_steps", "4", "--eval_steps", "2",
                               "--score_samples", "8", "--report_to", "none", "--disable_tqdm", "true"])
    assert any("eval_loss" in h for h in trainer.state.log_history)
    assert (tmp_path / "o" / "model.safetensors").is_file()
    out = capsys.readouterr().out
    assert "held-out exact match: 0.0% before" in out and "python inference.py --model_name_or_path" in out


def test_inference_answers_and_warns_on_pretrain_checkpoints(tmp_path):
    """inference.py answers one prompt for an Etude SFT folder, and warns when a checkpoint was only pretrained."""
    import subprocess
    import sys

    from tests.conftest import REPO
    out = tmp_path / "sft"
    main_train.main(["--output_dir", str(out), "--max_steps", "2", "--eval_steps", "2", "--score_samples", "0",
                     "--report_to", "none", "--disable_tqdm", "true"])
    ask = [sys.executable, "inference.py", "--prompt", "last: apple river", "--max_new_tokens", "8",
           "--temperature", "0"]
    proc = subprocess.run(ask + ["--model_name_or_path", str(out)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "only pretrained" not in proc.stderr

    import json
    config = json.loads((out / "config.json").read_text())
    config["training_stage"] = "pretrain"
    (out / "config.json").write_text(json.dumps(config))
    (out / "dojo_run.json").unlink()
    proc = subprocess.run(ask + ["--model_name_or_path", str(out)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and "only pretrained: it continues text" in proc.stderr
