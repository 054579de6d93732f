"""output_dir/progress.jsonl: what a run writes while it trains, for the Dojo board and `tail -f`."""
import main_train
from tests.conftest import train_argv
from utils.progress import read_progress


def test_progress_file_holds_every_logged_loss_with_its_step_while_training(tiny_model, toy_data, tmp_path):
    trainer = main_train.main(train_argv(tiny_model("qwen"), toy_data, tmp_path / "o", "--template_name", "qwen"))
    lines = read_progress(tmp_path / "o")
    assert lines[0]["event"] == "begin" and lines[-1]["event"] == "end"
    assert all(line["max_steps"] == 4 and line["elapsed_s"] >= 0 for line in lines)
    losses = [(line["step"], line["loss"]) for line in lines if "loss" in line]
    assert losses == [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    assert [line["step"] for line in lines if "loss" in line] == [1, 2, 3, 4]  # logging_steps 1


def test_progress_lines_cut_short_by_a_write_in_progress_are_skipped(tmp_path):
    (tmp_path / "progress.jsonl").write_text('{"step": 1, "max_steps": 4, "elapsed_s": 0.1}\n{"step": 2, "max')
    assert read_progress(tmp_path) == [{"step": 1, "max_steps": 4, "elapsed_s": 0.1}]
    assert read_progress(tmp_path / "absent") == []
