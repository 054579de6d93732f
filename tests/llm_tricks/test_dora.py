"""DoRALinear == peft `use_dora=True`: magnitude init, outputs, gradients (norm detached), merge."""

import random

import pytest
import torch
from torch import nn
from tricks_testutils import assert_close, copy_adapter_from_peft, forward_backward, peft_linear

from llm_tricks.dora.dora import DoRALinear

SHAPES = [(16, 24, 2, True), (48, 20, 8, False), (33, 65, 4, True)]


def _pair(in_f, out_f, r, bias, dropout=0.0):
    # init_lora_weights=False leaves B random in peft, so m = ||W0 + s B A|| differs from ||W0||:
    # this checks the paper's init formula, not just the B = 0 special case.
    _, peft_layer, _ = peft_linear(
        in_f, out_f, bias=bias, r=r, lora_alpha=r + 3, lora_dropout=dropout, use_dora=True, init_lora_weights=False
    )
    ours = DoRALinear(nn.Linear(in_f, out_f, bias=bias), r=r, alpha=r + 3, dropout=dropout)
    copy_adapter_from_peft(ours, peft_layer)
    ours.init_magnitude()
    return peft_layer, ours


@pytest.mark.parametrize("in_f,out_f,r,bias", SHAPES)
def test_magnitude_init_matches_peft_and_the_paper(in_f, out_f, r, bias):
    peft_layer, ours = _pair(in_f, out_f, r, bias)
    m_peft = peft_layer.lora_magnitude_vector["default"].weight
    assert_close(ours.magnitude, m_peft, what="magnitude")
    w = ours.base.weight + ours.scaling * ours.lora_B @ ours.lora_A
    assert_close(ours.magnitude, w.norm(dim=1), what="||W0 + sBA|| per output row")  # dim=1 of (out, in)
    # hence W' == W0 + sBA at init: DoRA starts exactly where LoRA does
    x = torch.randn(5, in_f)
    with torch.no_grad():
        lora_out = ours.base(x) + ours.lora_forward(x) * ours.scaling
        assert_close(ours(x), lora_out, atol=1e-5, what="init output")


@pytest.mark.parametrize("in_f,out_f,r,bias", SHAPES)
def test_forward_and_grads_match_peft(in_f, out_f, r, bias):
    peft_layer, ours = _pair(in_f, out_f, r, bias)
    with torch.no_grad():  # move m away from its init so (m / norm - 1) is not ~0
        ours.magnitude.mul_(1.5)
        peft_layer.lora_magnitude_vector["default"].weight.mul_(1.5)
    x, g = torch.randn(3, 4, in_f), torch.randn(3, 4, out_f)
    y_ref, gx_ref = forward_backward(peft_layer, x, g)
    y, gx = forward_backward(ours, x, g)
    assert_close(y, y_ref, what="output")
    assert_close(gx, gx_ref, what="grad x")
    assert_close(ours.lora_A.grad, peft_layer.lora_A["default"].weight.grad, what="grad A")
    assert_close(ours.lora_B.grad, peft_layer.lora_B["default"].weight.grad, what="grad B")
    assert_close(ours.magnitude.grad, peft_layer.lora_magnitude_vector["default"].weight.grad, what="grad m")


def test_norm_is_detached_in_backward():
    """Section 4.3: with the norm detached, grad A differs from the full-autograd gradient of the same forward."""
    _, ours = _pair(24, 16, 4, False)
    x, g = torch.randn(8, 24), torch.randn(8, 16)
    forward_backward(ours, x, g)
    detached = ours.lora_A.grad.clone()
    ours.lora_A.grad = None
    w = ours.base.weight + ours.scaling * ours.lora_B @ ours.lora_A
    full = x @ ((ours.magnitude / w.norm(dim=1)).unsqueeze(1) * w).T  # same W', norm kept in the graph
    (full * g).sum().backward()
    assert (ours.lora_A.grad - detached).abs().max() > 1e-4


@pytest.mark.parametrize("in_f,out_f,r,bias", SHAPES[:2])
def test_dropout_matches_peft(in_f, out_f, r, bias):
    peft_layer, ours = _pair(in_f, out_f, r, bias, dropout=0.25)
    peft_layer.train(), ours.train()
    x, g = torch.randn(6, in_f), torch.randn(6, out_f)
    seed = random.randrange(2**31)
    y_ref, gx_ref = forward_backward(peft_layer, x, g, seed=seed)
    y, gx = forward_backward(ours, x, g, seed=seed)
    assert_close(y, y_ref, what="output")
    assert_close(gx, gx_ref, what="grad x")
    assert_close(ours.magnitude.grad, peft_layer.lora_magnitude_vector["default"].weight.grad, what="grad m")


@pytest.mark.parametrize("in_f,out_f,r,bias", SHAPES)
def test_merge_unmerge_match_peft(in_f, out_f, r, bias):
    peft_layer, ours = _pair(in_f, out_f, r, bias)
    with torch.no_grad():
        ours.magnitude.mul_(0.7)
        peft_layer.lora_magnitude_vector["default"].weight.mul_(0.7)
    x = torch.randn(5, in_f)
    w0 = ours.base.weight.detach().clone()
    with torch.no_grad():
        y = ours(x)
        ours.merge()
        peft_layer.merge()
        assert_close(ours.base.weight, peft_layer.base_layer.weight, what="merged weight")
        assert_close(ours(x), y, atol=1e-5, what="merged output")
        ours.unmerge()
    assert_close(ours.base.weight, w0, what="unmerged weight")
