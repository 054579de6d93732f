"""utils/save.py: the written adapter is reloaded and checked against the trained tensors before a run reports done."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from utils.save import ADAPTER_FILE, verify_outputs

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
