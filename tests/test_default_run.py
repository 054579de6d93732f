"""The default command (python main_train.py) runs offline; here shortened to a few steps."""
import main_train


def test_default_config_runs_offline(tmp_path, capsys):
    trainer = main_train.main(["--output_dir", str(tmp_path / "o"), "--max_steps", "4", "--eval_steps", "2",
                               "--score_samples", "8", "--report_to", "none", "--disable_tqdm", "true"])
    assert any("eval_loss" in h for h in trainer.state.log_history)
    assert (tmp_path / "o" / "model.safetensors").is_file()
    out = capsys.readouterr().out
    assert "held-out exact match: 0.0% before" in out and "python inference.py --model_name_or_path" in out
