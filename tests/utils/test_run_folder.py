"""An output_dir belongs to one run: a resumed run ends where a straight one does, resumes continue only that run,
a used folder is refused (a dry run only warns), overwrites move the old one aside, a finished run is not trained
further, and nothing broken or half-written is ever taken for a checkpoint."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

import main_train
from tests.conftest import TOY_RECORDS, final_loss, train_argv, trainable_params, write_jsonl
from utils.run_folder import RUN_RECORD, checkpoint_run_id, checkpoint_state, last_checkpoint, read_record
from utils.trainer import NonFiniteLossError

ADAPTER = "adapter_model.safetensors"
STEPS = ["--template_name", "qwen", "--max_steps", "4", "--save_steps", "2"]


@pytest.fixture(scope="module")
def finished_run(tiny_model, tmp_path_factory):
    """A LoRA run of 4 steps that saved checkpoint-2 and checkpoint-4 and finished. Tests work on copies."""
    root = tmp_path_factory.mktemp("finished")
    (root / "toy.jsonl").write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n"
                                            for i in range(8)))
    main_train.main(train_argv(tiny_model("qwen"), root / "toy.jsonl", root / "run", *STEPS))
    return root / "run", root / "toy.jsonl"


def copy_run(finished_run, dest):
    shutil.copytree(finished_run[0], dest)
    return dest


def checkpoints(folder) -> list[str]:
    return sorted(p.name for p in folder.glob("checkpoint-*"))


def test_a_run_tags_its_folder_and_every_checkpoint(finished_run):
    run_id = read_record(finished_run[0])["run_id"]
    assert read_record(finished_run[0])["finished_step"] == 4
    assert checkpoints(finished_run[0]) == ["checkpoint-2", "checkpoint-4"]
    assert {checkpoint_run_id(checkpoint_state(p)) for p in finished_run[0].glob("checkpoint-*")} == {run_id}


def test_resuming_a_finished_run_trains_nothing_and_says_so(finished_run, tiny_model, tmp_path, capsys):
    out = copy_run(finished_run, tmp_path / "o")
    before = load_file(out / ADAPTER)
    argv = train_argv(tiny_model("qwen"), finished_run[1], out, *STEPS, "--resume_from_checkpoint", "true")
    assert main_train.main(argv) is None
    assert "already finished; nothing to train" in capsys.readouterr().out
    assert checkpoints(out) == ["checkpoint-2", "checkpoint-4"]  # was: checkpoint-5, one step past max_steps
    assert all(torch.equal(before[k], v) for k, v in load_file(out / ADAPTER).items())


def test_resume_after_a_kill_during_the_final_save_only_saves(finished_run, tiny_model, tmp_path, capsys):
    out = copy_run(finished_run, tmp_path / "o")
    for name in (ADAPTER, "adapter_config.json", "dojo_run.json", "log_history.json"):
        (out / name).unlink()
    record = read_record(out)
    (out / RUN_RECORD).write_text(json.dumps({**record, "finished_step": None}))
    trainer = main_train.main(train_argv(tiny_model("qwen"), finished_run[1], out, *STEPS,
                                         "--resume_from_checkpoint", "true"))
    assert "only the final save" in capsys.readouterr().out
    assert trainer.state.global_step == 4 and checkpoints(out) == ["checkpoint-2", "checkpoint-4"]
    final, expected = load_file(out / ADAPTER), load_file(finished_run[0] / ADAPTER)
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in final)
    assert read_record(out)["finished_step"] == 4


def test_resume_never_continues_another_run(finished_run, tiny_model, tmp_path, capsys):
    """Run A (checkpoints 2 and 4) is overwritten by run B (checkpoints 1 and 2): A's checkpoints are moved aside,
    not deleted, and B's resume continues B's checkpoint-2 (before: A's checkpoint-4, the highest step)."""
    out = copy_run(finished_run, tmp_path / "o")
    run_a = read_record(out)["run_id"]
    model, data = tiny_model("qwen"), finished_run[1]
    b = ["--template_name", "qwen", "--save_steps", "1", "--save_total_limit", "5"]
    entries = len(list(out.iterdir()))
    main_train.main(train_argv(model, data, out, *b, "--max_steps", "2", "--overwrite_output_dir", "true"))
    assert f"moved {entries} entries" in capsys.readouterr().out
    aside = next(tmp_path.glob("o.replaced-*"))
    assert checkpoints(aside) == ["checkpoint-2", "checkpoint-4"] and read_record(aside)["run_id"] == run_a
    assert checkpoints(out) == ["checkpoint-1", "checkpoint-2"] and read_record(out)["run_id"] != run_a

    trainer = main_train.main(train_argv(model, data, out, *b, "--max_steps", "3", "--resume_from_checkpoint", "true"))
    assert f"from {out / 'checkpoint-2'}" in capsys.readouterr().out
    assert trainer.state.global_step == 3 and checkpoints(out) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]

    shutil.copytree(aside / "checkpoint-4", out / "checkpoint-4")  # another run's checkpoint, brought back by hand
    with pytest.raises(FileExistsError, match=r"holds what is not run .* \(checkpoint-4\)"):
        main_train.main(train_argv(model, data, out, *b, "--max_steps", "5", "--resume_from_checkpoint", "true"))


def test_resume_false_is_checked_like_a_new_run(finished_run, tiny_model, tmp_path):
    out = copy_run(finished_run, tmp_path / "o")
    with pytest.raises(FileExistsError, match="is not empty"):
        main_train.main(train_argv(tiny_model("qwen"), finished_run[1], out, *STEPS,
                                   "--resume_from_checkpoint", "false"))


@pytest.mark.parametrize("text", ["", '{"global_step": 4, "log_hist'], ids=["empty", "truncated"])
def test_unreadable_trainer_state_is_not_a_complete_checkpoint(finished_run, tiny_model, tmp_path, text):
    out = copy_run(finished_run, tmp_path / "o")
    (out / "checkpoint-4" / "trainer_state.json").write_text(text)
    assert last_checkpoint(out) == str(out / "checkpoint-2")
    with pytest.raises(ValueError, match="incomplete checkpoint"):
        main_train.main(train_argv(tiny_model("qwen"), finished_run[1], out, *STEPS, "--max_steps", "6",
                                   "--resume_from_checkpoint", str(out / "checkpoint-4")))


def test_nan_is_never_saved_in_a_checkpoint(tiny_model, toy_data, tmp_path):
    """Logging only every 100 steps, saving every step: the loss is checked at each step, the weights before
    each save (before: checkpoints of NaN weights were saved as complete)."""
    out = tmp_path / "o"
    with pytest.raises(NonFiniteLossError, match="was not saved"):
        main_train.main(train_argv(tiny_model("qwen"), toy_data, out, "--template_name", "qwen", "--train_mode",
                                   "full", "--learning_rate", "1e30", "--max_grad_norm", "0", "--logging_steps",
                                   "100", "--save_steps", "1"))
    for folder in out.glob("checkpoint-*"):
        if checkpoint_state(folder) is not None:
            assert all(torch.isfinite(t).all() for t in load_file(folder / "model.safetensors").values())


def test_a_nan_loss_since_the_last_save_blocks_the_next_save(tmp_path):
    """The per-step flag alone (finite weights here): a NaN loss of any micro-batch stops the next save."""
    from tests.conftest import tiny_qwen2
    from train_args.base import TrainArgs
    from utils.trainer import DojoTrainer
    args = TrainArgs(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", max_steps=1)
    trainer = DojoTrainer(model=tiny_qwen2(), args=args)
    trainer.check_finite("checkpoint-1")
    trainer._note_loss(torch.tensor(2.0))
    trainer._note_loss(torch.tensor(float("nan")))
    trainer._note_loss(torch.tensor(1.0))
    with pytest.raises(NonFiniteLossError, match="a training loss became NaN/inf .* checkpoint-2 was not saved"):
        trainer.check_finite("checkpoint-2")


def test_a_failed_checkpoint_write_is_an_error_and_keeps_the_last_checkpoint(finished_run, tiny_model, tmp_path,
                                                                           capsys):
    """A save that cannot write (here: a file where the checkpoint folder goes, which blocks root as well as a
    full disk would) ends in an `error:` line, exit 1, and the last complete checkpoint unchanged."""
    out = copy_run(finished_run, tmp_path / "o")
    (out / "checkpoint-6").write_text("in the way")
    kept = {p.name: p.read_bytes() for p in (out / "checkpoint-4").iterdir()}
    code = main_train.cli(train_argv(tiny_model("qwen"), finished_run[1], out, "--template_name", "qwen",
                                     "--max_steps", "6", "--resume_from_checkpoint", "true"))
    err = capsys.readouterr().err
    assert code == 1 and "error: could not write checkpoint-6" in err
    assert f"The last complete checkpoint, {out / 'checkpoint-4'}, is intact" in err
    assert {p.name: p.read_bytes() for p in (out / "checkpoint-4").iterdir()} == kept
    assert last_checkpoint(out) == str(out / "checkpoint-4")


def test_output_dir_under_a_file_is_an_error_before_anything_is_written(tmp_path, toy_data, tiny_model, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main_train.cli(train_argv(tiny_model("qwen"), toy_data, blocker / "o")) == 2
    assert f"error: output_dir: {blocker} is a file" in capsys.readouterr().err


def test_read_only_output_dir_is_an_error_before_anything_is_written(tmp_path, toy_data, tiny_model, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: a read-only mode does not stop writes (the file case covers it)")
        assert main_train.cli(train_argv(tiny_model("qwen"), toy_data, locked / "o")) == 2
        assert f"error: output_dir: {locked} is not writable" in capsys.readouterr().err
    finally:
        locked.chmod(0o755)


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
    for name, p in trainable_params(straight).items():
        torch.testing.assert_close(trainable_params(resumed)[name], p, atol=1e-5, rtol=0)


def test_non_empty_output_dir_is_refused(tiny_model, toy_data, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        main_train.main(train_argv(tiny_model("qwen"), toy_data, out, "--template_name", "qwen"))
    assert (out / "precious.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1


def test_dry_run_on_a_used_output_dir_warns_and_touches_nothing(tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", TOY_RECORDS)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("earlier results")
    main_train.main(train_argv(tiny_model("qwen"), data, tmp_path / "o", "--template_name", "qwen", "--dry_run", "true"))
    assert "a real run would stop here" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["keep.txt"]

