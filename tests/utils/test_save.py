"""utils/save.py: the written adapter is reloaded and checked against the trained tensors before a run reports done;
under DDP only rank 0 writes; the loss curve is drawn when a loss was logged."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import REPO, train_argv

from utils.save import ADAPTER_FILE, plot_loss_curve, verify_outputs

SNAPSHOT = {"base_model.model.layer.lora_A.weight": torch.zeros(2, 4),
            "base_model.model.layer.lora_B.weight": torch.zeros(4, 2)}


def write_adapter(folder, tensors) -> SimpleNamespace:
    save_file(tensors, str(folder / ADAPTER_FILE))
    return SimpleNamespace(output_dir=str(folder), train_mode="lora", stage="sft")


def test_verify_counts_the_trained_tensors_that_changed(tmp_path):
    args = write_adapter(tmp_path, {**SNAPSHOT, "base_model.model.layer.lora_B.weight": torch.ones(4, 2)})
    assert verify_outputs(args, SNAPSHOT) == f"verified {tmp_path}: 1 of 2 trained tensors changed, all finite"


def test_verify_refuses_an_adapter_missing_a_trained_tensor(tmp_path):
    args = write_adapter(tmp_path, {"base_model.model.layer.lora_A.weight": torch.ones(2, 4)})
    with pytest.raises(RuntimeError, match="lacks 1 trained tensors, e.g. base_model.model.layer.lora_B.weight"):
        verify_outputs(args, SNAPSHOT)


def test_verify_names_a_saved_tensor_that_holds_nan(tmp_path):
    nan = torch.full((2, 4), float("nan"))
    args = write_adapter(tmp_path, {**SNAPSHOT, "base_model.model.layer.lora_A.weight": nan})
    with pytest.raises(RuntimeError, match="saved tensor base_model.model.layer.lora_A.weight holds NaN"):
        verify_outputs(args, SNAPSHOT)


def test_verify_refuses_a_run_whose_tensors_never_moved(tmp_path):
    with pytest.raises(RuntimeError, match="no trained tensor changed"):
        verify_outputs(write_adapter(tmp_path, dict(SNAPSHOT)), SNAPSHOT)


def test_two_ranks_with_torchrun_gloo(tiny_model, toy_data, tmp_path):
    """DDP on CPU: 2 ranks train, only rank 0 writes."""
    out = tmp_path / "o"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         "main_train.py", *train_argv(tiny_model("qwen"), toy_data, out, "--template_name", "qwen",
                                      "--ddp_backend", "gloo", "--max_steps", "2")],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("[dojo] verified") == 1
    assert (out / "adapter_model.safetensors").is_file()


def test_loss_curve_of_a_run_too_short_to_log_is_not_drawn_and_one_point_draws_without_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not plot_loss_curve([{"step": 2, "train_loss": 1.0}], tmp_path / "empty.png")
        assert plot_loss_curve([{"step": 1, "loss": 2.0}], tmp_path / "one.png")
    assert not (tmp_path / "empty.png").exists() and (tmp_path / "one.png").stat().st_size > 0
