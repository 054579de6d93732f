"""RSLoRALinear == peft `use_rslora=True`, and the scaling argument of the README."""

import math

import pytest
import torch
from torch import nn
from tricks_testutils import assert_close, copy_adapter_from_peft, forward_backward, peft_linear

from llm_tricks.lora.lora import LoRALinear
from llm_tricks.rslora.rslora import RSLoRALinear, rslora_scaling


@pytest.mark.parametrize("in_f,out_f,r,alpha", [(16, 24, 2, 16), (48, 20, 8, 8), (33, 65, 64, 32)])
def test_matches_peft_use_rslora(in_f, out_f, r, alpha):
    _, peft_layer, _ = peft_linear(in_f, out_f, r=r, lora_alpha=alpha, use_rslora=True)
    ours = RSLoRALinear(nn.Linear(in_f, out_f), r=r, alpha=alpha)
    assert ours.scaling == peft_layer.scaling["default"] == alpha / math.sqrt(r)
    with torch.no_grad():
        peft_layer.lora_B["default"].weight.normal_()
    copy_adapter_from_peft(ours, peft_layer)
    x, g = torch.randn(2, 7, in_f), torch.randn(2, 7, out_f)
    y_ref, gx_ref = forward_backward(peft_layer, x, g)
    y, gx = forward_backward(ours, x, g)
    assert_close(y, y_ref, what="output")
    assert_close(gx, gx_ref, what="grad x")
    assert_close(ours.lora_A.grad, peft_layer.lora_A["default"].weight.grad, what="grad A")
    assert_close(ours.lora_B.grad, peft_layer.lora_B["default"].weight.grad, what="grad B")


def test_rslora_only_changes_the_scaling():
    assert rslora_scaling(16, 16) == 4.0 and LoRALinear.compute_scaling(16, 16) == 1.0
    assert rslora_scaling(16, 1) == LoRALinear.compute_scaling(16, 1)  # r = 1: the two agree


def _adapter_output_rms(cls, r, in_f=512, out_f=512, alpha=16):
    """RMS of s * B A x with B ~ N(0, 1): a sum of r independent terms, so B A x grows like sqrt(r)."""
    layer = cls(nn.Linear(in_f, out_f), r=r, alpha=alpha)
    with torch.no_grad():
        layer.lora_B.normal_()
        return (layer.lora_forward(torch.randn(64, in_f)) * layer.scaling).pow(2).mean().sqrt().item()


def test_rank_stability_toy():
    """alpha/r makes the adapter output shrink like 1/sqrt(r); alpha/sqrt(r) keeps it flat (16x rank here)."""
    lora = _adapter_output_rms(LoRALinear, 4) / _adapter_output_rms(LoRALinear, 64)
    rs = _adapter_output_rms(RSLoRALinear, 4) / _adapter_output_rms(RSLoRALinear, 64)
    assert 3.0 < lora < 5.3  # sqrt(16) = 4
    assert 0.75 < rs < 1.33  # 1
