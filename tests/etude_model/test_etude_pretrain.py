"""Pretraining: the token cache, packed windows, and the training loop (loss falls, resume is exact)."""

import json

import numpy as np
import pytest
import torch

from etude_model import load_etude_tokenizer, make_config
from etude_model.data import PackedWindows, build_token_cache, iter_documents, list_data_files, split_train_val
from etude_model.pretrain import build_parser, flops_per_token, get_lr, main

TINY = ["hidden_size=64", "num_hidden_layers=2", "num_attention_heads=4", "num_key_value_heads=2", "dropout=0.1"]


def pretrain_args(data, tokenizer_dir, out, cache, max_steps, *extra):
    args = ["--preset", "etude-tiny", "--data", str(data), "--tokenizer", str(tokenizer_dir),
            "--output_dir", str(out), "--cache_dir", str(cache), "--max_steps", str(max_steps),
            "--block_size", "32", "--batch_size", "4", "--grad_accum_steps", "2", "--lr", "3e-3",
            "--warmup_steps", "2", "--eval_every", "4", "--eval_iters", "2", "--log_every", "1",
            "--save_every", "4", "--seed", "0", "--no_progress"]
    for item in TINY:  # dropout > 0 so that resuming must also restore the RNG state
        args += ["--config_override", item]
    return args + list(extra)


def read_log(out):
    return [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]


def test_documents_and_token_cache(tmp_path, small_tokenizer_dir):
    (tmp_path / "a.txt").write_text("first para\nstill first\n\n\nsecond para\r\n\r\nthird\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"text": "json doc"}\n\n{"text": "another"}\n', encoding="utf-8")
    files = list_data_files([tmp_path])
    assert [f.name for f in files] == ["a.txt", "b.jsonl"]
    assert list(iter_documents(files)) == ["first para\nstill first", "second para", "third", "json doc", "another"]
    assert list(iter_documents(files[:1], "line")) == ["first para", "still first", "second para", "third"]

    tok = load_etude_tokenizer(small_tokenizer_dir)
    tokens, meta = build_token_cache([tmp_path], tok, tmp_path / "cache")
    assert meta["num_documents"] == 5 and tokens.dtype == np.uint16
    assert int((tokens == tok.eos_token_id).sum()) == 5 and tokens[-1] == tok.eos_token_id  # EOS after each doc
    expected = sum((tok(d, add_special_tokens=False)["input_ids"] + [0] for d in iter_documents(files)), [])
    assert tokens.tolist() == expected
    again, _ = build_token_cache([tmp_path], tok, tmp_path / "cache")  # the rerun memory-maps the same file
    assert again.filename == tokens.filename and len(list((tmp_path / "cache").glob("*.bin"))) == 1


def test_packed_windows_order_and_state():
    tokens = np.arange(101, dtype=np.uint16)
    loader = PackedWindows(tokens, block_size=10, batch_size=3, seed=1)
    x, y = loader.next_batch()
    assert x.shape == (3, 10) and torch.equal(x[:, 1:], y[:, :-1]) and (x[:, 0] % 10 == 0).all()
    state = loader.state_dict()
    rest = [loader.next_batch()[0] for _ in range(5)]  # crosses an epoch boundary (10 windows)
    resumed = PackedWindows(tokens, block_size=10, batch_size=3, seed=1)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, resumed.next_batch()[0]) for a in rest)
    train, val = split_train_val(tokens, 0.1, 10)
    assert len(train) == 90 and len(val) == 11
    with pytest.raises(ValueError, match="too small"):
        split_train_val(tokens, 0.5, 60)


def test_schedule_and_flops():
    args = build_parser().parse_args(["--data", "x", "--output_dir", "y", "--lr", "1e-3", "--warmup_steps", "10"])
    args.min_lr, args.lr_decay_steps = 1e-4, 110
    assert get_lr(0, args) == pytest.approx(1e-4) and get_lr(9, args) == pytest.approx(1e-3)
    assert get_lr(60, args) == pytest.approx(5.5e-4) and get_lr(110, args) == get_lr(500, args) == 1e-4
    config = make_config("etude-124m")
    assert 6 * 110e6 < flops_per_token(config, 1024) < 6 * 130e6 + 12 * 12 * 768 * 1024


def test_help_documents_every_flag(capsys):
    parser = build_parser()
    undocumented = [a.dest for a in parser._actions if not a.help]
    assert not undocumented
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ["--preset", "--data", "--output_dir", "--max_steps", "--resume", "--compile", "--peak_tflops",
                 "--grad_accum_steps", "--overwrite_output_dir", "--tokenizer"]:
        assert flag in text


def test_pretrain_lowers_loss_and_resumes_exactly(tmp_path, corpus_file, small_tokenizer_dir):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    cache = tmp_path / "cache"
    full, split = tmp_path / "full", tmp_path / "split"
    main(pretrain_args(corpus_file, small_tokenizer_dir, full, cache, 12))
    main(pretrain_args(corpus_file, small_tokenizer_dir, split, cache, 6, "--lr_decay_steps", "12"))
    resume_args = pretrain_args(corpus_file, small_tokenizer_dir, split, cache, 12, "--resume")
    i = resume_args.index("--block_size")
    main(resume_args[:i] + resume_args[i + 2:])  # block_size comes back from the checkpoint

    log_full, log_split = read_log(full), read_log(split)
    train_full = {r["step"]: r["train_loss"] for r in log_full if "train_loss" in r}
    train_split = {r["step"]: r["train_loss"] for r in log_split if "train_loss" in r}
    assert sorted(train_full) == sorted(train_split) == list(range(1, 13))
    for step in range(1, 13):  # 6 + 6 steps == 12 steps
        assert abs(train_full[step] - train_split[step]) < 1e-5, step
    val_full = [r["val_loss"] for r in log_full if "val_loss" in r]
    assert len(val_full) == 3 and val_full[-1] < val_full[0] - 0.3  # it learns
    assert train_full[12] < train_full[1] - 1.0

    weights_full, weights_split = load_file(full / "model.safetensors"), load_file(split / "model.safetensors")
    assert weights_full.keys() == weights_split.keys()
    for name in weights_full:
        torch.testing.assert_close(weights_full[name], weights_split[name], rtol=0, atol=1e-5)

    # Outputs: a loadable HF checkpoint marked as pretrain, checkpoints, curve, one shared token cache.
    model = AutoModelForCausalLM.from_pretrained(full)
    assert model.config.training_stage == "pretrain" and model.config.vocab_size == 448
    assert sorted(p.name for p in full.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-8"]
    state = torch.load(full / "checkpoint-12" / "training_state.pt", weights_only=True)
    assert state["step"] == 12 and state["optimizer"]["state"]
    assert (full / "loss_curve.png").stat().st_size > 0 and (full / "tokenizer.json").exists()
    assert len(list(cache.glob("*.bin"))) == 1


def test_refuses_non_empty_output_dir(tmp_path, corpus_file, small_tokenizer_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="not empty"):
        main(pretrain_args(corpus_file, small_tokenizer_dir, out, tmp_path / "cache", 1))
    with pytest.raises(SystemExit, match="no checkpoint"):
        main(pretrain_args(corpus_file, small_tokenizer_dir, out, tmp_path / "cache", 1, "--resume"))
    assert (out / "precious.txt").read_text() == "keep me"


def test_overwrite_output_dir_moves_the_old_run_aside_and_deletes_nothing(tmp_path, corpus_file,
                                                                          small_tokenizer_dir, capsys):
    """--overwrite_output_dir starts afresh without deleting a file: the old checkpoints, log and the user's own
    files move to a sibling OUT.replaced-TIME folder, as main_train.py's overwrite does (utils/run_folder.py)."""
    out = tmp_path / "out"
    (out / "checkpoint-4").mkdir(parents=True)
    (out / "checkpoint-4" / "training_state.pt").write_bytes(b"old state")
    (out / "loss_log.jsonl").write_text('{"step": 4, "train_loss": 9.0}\n')
    (out / "notes.txt").write_text("keep me")
    main(pretrain_args(corpus_file, small_tokenizer_dir, out, tmp_path / "cache", 1, "--overwrite_output_dir"))
    aside, = tmp_path.glob("out.replaced-*")
    assert (aside / "checkpoint-4" / "training_state.pt").read_bytes() == b"old state"
    assert (aside / "loss_log.jsonl").read_text() == '{"step": 4, "train_loss": 9.0}\n'
    assert (aside / "notes.txt").read_text() == "keep me"
    assert [r["step"] for r in read_log(out)] == [1, 1] and sorted(p.name for p in out.glob("checkpoint-*")) == [
        "checkpoint-1"]
    assert f"to {aside}; nothing was deleted" in capsys.readouterr().out


def test_fused_ce_on_cpu_trains_exactly_like_the_plain_loop(tmp_path, corpus_file, small_tokenizer_dir, capsys):
    """--fused_ce is a CUDA kernel; on CPU torch's cross-entropy runs in its place: the plain run's log, exactly."""
    cache = tmp_path / "cache"
    main(pretrain_args(corpus_file, small_tokenizer_dir, tmp_path / "plain", cache, 4, "--device", "cpu"))
    main(pretrain_args(corpus_file, small_tokenizer_dir, tmp_path / "fused", cache, 4, "--device", "cpu",
                       "--fused_ce"))
    assert "on cpu torch's cross-entropy" in capsys.readouterr().out
    timing = ("tokens_per_sec", "mfu")
    logs = [[{k: v for k, v in r.items() if k not in timing} for r in read_log(tmp_path / run)]
            for run in ("plain", "fused")]
    assert logs[0] == logs[1] and len(logs[0]) == 5  # 4 training lines and the final validation


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_ce_and_bf16_residual_train_like_the_plain_loop(tmp_path, corpus_file, small_tokenizer_dir):
    """The fast pretraining switches (liger's cross-entropy, the residual stream in bf16) log the plain loop's
    training and validation losses within bf16 rounding, step by step (2 micro-batches per step: liger scales its
    in-place gradient by the accumulation's 1/2 in the backward)."""
    cache = tmp_path / "cache"
    main(pretrain_args(corpus_file, small_tokenizer_dir, tmp_path / "plain", cache, 8))
    main(pretrain_args(corpus_file, small_tokenizer_dir, tmp_path / "fast", cache, 8,
                       "--fused_ce", "--config_override", "autocast_residual=true"))
    plain, fast = read_log(tmp_path / "plain"), read_log(tmp_path / "fast")
    assert [sorted(r) for r in plain] == [sorted(r) for r in fast]
    for a, b in zip(plain, fast):
        for key in ("train_loss", "val_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=2e-2), (a["step"], key)
    assert fast[-1]["val_loss"] < plain[0]["train_loss"] - 0.3  # and it learns


def test_cpu_run_warns_when_warmup_exceeds_max_steps_and_logs_no_mfu(tmp_path, corpus_file, small_tokenizer_dir,
                                                                    capsys):
    """MFU is a ratio to an accelerator's peak (--peak_tflops): on a CPU it would read 0.0%, so it is left out; a
    warmup longer than the run never reaches the peak learning rate, which the user is told."""
    main(pretrain_args(corpus_file, small_tokenizer_dir, tmp_path / "out", tmp_path / "cache", 2, "--device", "cpu",
                       "--warmup_steps", "5"))
    assert "warning: --warmup_steps 5 exceeds --max_steps 2" in capsys.readouterr().err
    logs = read_log(tmp_path / "out")
    assert all("mfu" not in r for r in logs) and any("tokens_per_sec" in r for r in logs)
