"""pissa_init_ == peft `init_lora_weights="pissa"` (exact SVD): same A, B, residual; W_res + sBA == W0."""

import pytest
import torch
from torch import nn
from tricks_testutils import assert_close, copy_adapter_from_peft, forward_backward, peft_linear

from llm_tricks.lora.lora import LoRALinear
from llm_tricks.pissa.pissa import pissa_init_

SHAPES = [(16, 24, 2, True), (48, 20, 8, False), (33, 65, 4, True)]


def _pair(in_f, out_f, r, bias, alpha):
    _, peft_layer, original = peft_linear(in_f, out_f, bias=bias, r=r, lora_alpha=alpha, init_lora_weights="pissa")
    base = nn.Linear(in_f, out_f, bias=bias)
    base.load_state_dict(original.state_dict())  # the untouched W0
    ours = pissa_init_(LoRALinear(base, r=r, alpha=alpha))
    return peft_layer, ours, original


@pytest.mark.parametrize("in_f,out_f,r,bias", SHAPES)
@pytest.mark.parametrize("alpha", [1, 16])
def test_init_matches_peft(in_f, out_f, r, bias, alpha):
    peft_layer, ours, original = _pair(in_f, out_f, r, bias, alpha)
    assert_close(ours.lora_A, peft_layer.lora_A["default"].weight, what="A")
    assert_close(ours.lora_B, peft_layer.lora_B["default"].weight, what="B")
    assert_close(ours.base.weight, peft_layer.base_layer.weight, what="residual W")
    assert_close(ours.base.weight + ours.delta_weight(), original.weight, what="W_res + sBA vs W0")
    x = torch.randn(4, in_f)
    with torch.no_grad():
        assert_close(ours(x), original(x), atol=1e-5, what="output at init vs the original layer")


@pytest.mark.parametrize("in_f,out_f,r,bias", SHAPES)
def test_adapter_holds_the_top_singular_directions(in_f, out_f, r, bias):
    _, ours, original = _pair(in_f, out_f, r, bias, alpha=16)
    s = torch.linalg.svdvals(original.weight.detach())
    assert_close(torch.linalg.svdvals(ours.delta_weight().detach())[:r], s[:r], atol=1e-5, what="top-r values")
    # the residual keeps the rest: its largest singular value is W0's (r+1)-th
    assert_close(torch.linalg.svdvals(ours.base.weight)[0], s[r], atol=1e-5, what="residual spectrum")


@pytest.mark.parametrize("in_f,out_f,r,bias", SHAPES)
def test_training_grads_match_peft(in_f, out_f, r, bias):
    peft_layer, ours, _ = _pair(in_f, out_f, r, bias, alpha=8)
    copy_adapter_from_peft(ours, peft_layer)
    x, g = torch.randn(2, 3, in_f), torch.randn(2, 3, out_f)
    y_ref, gx_ref = forward_backward(peft_layer, x, g)
    y, gx = forward_backward(ours, x, g)
    assert_close(y, y_ref, what="output")
    assert_close(gx, gx_ref, what="grad x")
    assert_close(ours.lora_A.grad, peft_layer.lora_A["default"].weight.grad, what="grad A")
    assert_close(ours.lora_B.grad, peft_layer.lora_B["default"].weight.grad, what="grad B")
    assert ours.lora_A.grad.abs().max() > 0  # unlike LoRA (B = 0), A learns from the first step
