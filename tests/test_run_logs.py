"""What a run tells its user: tokens per second and ETA while training, a score after training, a summary; inference
stops where the adapter's turns end; the entry points start without bitsandbytes' kernel warning."""
from __future__ import annotations

from transformers import GenerationConfig

import inference
import main_train
from tests.conftest import train_argv


def test_run_logs_tokens_per_second_eta_bounded_after_only_score_and_summary(tiny_model, toy_data, tmp_path, capsys):
    """Every training log carries tokens per second and the ETA (console, tensorboard, log_history); the count is of the
    tokens fed, pad excluded; score_before false scores only after training; the run ends with a summary line."""
    out = tmp_path / "out"
    trainer = main_train.main(train_argv(tiny_model("qwen"), toy_data, out, "--template_name", "qwen",
                                         "--eval_data_path", str(toy_data), "--eval_steps", "2",
                                         "--score_data_path", str(toy_data), "--score_before", "false",
                                         "--report_to", "tensorboard"))
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 4 and all(h["tokens_per_second"] > 0 for h in logs)
    assert [h["eta_seconds"] for h in logs][-1] == 0 and all(h["eta_seconds"] >= 0 for h in logs)
    # 4 steps of 2 samples are the 8 toy samples once: every token of theirs, and no pad
    assert trainer.state.num_input_tokens_seen == sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    printed = capsys.readouterr().out
    assert "'tokens_per_second'" in printed and "'eta_seconds'" in printed
    assert "exact match after training" in printed and "before training" not in printed
    best = min(h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h)
    assert (f"summary: 4 steps in 0m" in printed and f"{trainer.state.num_input_tokens_seen:,} tokens" in printed
            and f"best eval loss {best:.4f}" in printed and f"output in {out}" in printed)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(next((out / "runs").iterdir()))).Reload()  # the Trainer's default log dir
    assert {"train/tokens_per_second", "train/eta_seconds"} <= set(events.Tags()["scalars"])


def test_inference_stops_at_the_adapters_end_of_turn_not_the_bases_end_of_text(tiny_model, toy_data, tmp_path):
    """Gemma's base generation config knows only <eos>; the adapter was trained to end turns with <end_of_turn>,
    which training wrote into the adapter folder: inference with --adapter_path must stop there too."""
    base, out = tiny_model("gemma"), tmp_path / "out"
    main_train.main(train_argv(base, toy_data, out, "--template_name", "gemma", "--max_steps", "1"))
    _, tokenizer, stops = inference.load(inference.parse_args(["--model_name_or_path", str(base),
                                                               "--adapter_path", str(out)]))
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert end_of_turn not in [GenerationConfig.from_pretrained(base).eos_token_id]  # the base's: <eos> only
    assert end_of_turn in stops and tokenizer.eos_token_id in stops


def test_entry_points_start_without_the_optional_bitsandbytes_kernel_warning():
    """bitsandbytes warns "Failed to load CPU gemm_4bit_forward ... pip install kernels" on import (CPUs with
    AVX512-BF16), which reads like a broken install; its own kernel is used either way."""
    import subprocess
    import sys
    from tests.conftest import REPO
    proc = subprocess.run([sys.executable, "-c", "import main_train, inference, bitsandbytes"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "gemm_4bit" not in proc.stderr and "pip install kernels" not in proc.stderr
