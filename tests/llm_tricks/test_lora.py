"""LoRALinear == peft LoRA (outputs and gradients), plus the properties the README relies on."""

import random

import pytest
import torch
from torch import nn
from tricks_testutils import assert_close, copy_adapter_from_peft, forward_backward, peft_linear

from llm_tricks.lora.lora import LoRALinear, add_adapters

SHAPES = [(16, 24, 2, True), (48, 20, 8, False), (33, 65, 4, True)]  # (in, out, r, bias): non-square, several ranks


def _pair(in_f, out_f, r, bias, alpha=16, dropout=0.0, **kw):
    peft_model, peft_layer, _ = peft_linear(in_f, out_f, bias=bias, r=r, lora_alpha=alpha, lora_dropout=dropout, **kw)
    ours = LoRALinear(nn.Linear(in_f, out_f, bias=bias), r=r, alpha=alpha, dropout=dropout)
    with torch.no_grad():  # B = 0 at init would hide bugs in A's gradient: use a random B on both sides
        peft_layer.lora_B["default"].weight.normal_()
    copy_adapter_from_peft(ours, peft_layer)
    return peft_model, peft_layer, ours


@pytest.mark.parametrize("in_f,out_f,r,bias", SHAPES)
def test_forward_and_grads_match_peft(in_f, out_f, r, bias):
    _, peft_layer, ours = _pair(in_f, out_f, r, bias, alpha=2 * r + 1)
    x, g = torch.randn(3, 5, in_f), torch.randn(3, 5, out_f)
    y_ref, gx_ref = forward_backward(peft_layer, x, g)
    y, gx = forward_backward(ours, x, g)
    assert_close(y, y_ref, what="output")
    assert_close(gx, gx_ref, what="grad x")
    assert_close(ours.lora_A.grad, peft_layer.lora_A["default"].weight.grad, what="grad A")
    assert_close(ours.lora_B.grad, peft_layer.lora_B["default"].weight.grad, what="grad B")
    assert ours.base.weight.grad is None  # W0 is frozen


@pytest.mark.parametrize("in_f,out_f,r,bias", SHAPES[:2])
def test_dropout_matches_peft_with_the_same_mask(in_f, out_f, r, bias):
    _, peft_layer, ours = _pair(in_f, out_f, r, bias, dropout=0.3)
    peft_layer.train(), ours.train()
    x, g = torch.randn(4, in_f), torch.randn(4, out_f)
    seed = random.randrange(2**31)
    y_ref, gx_ref = forward_backward(peft_layer, x, g, seed=seed)
    y, gx = forward_backward(ours, x, g, seed=seed)
    assert_close(y, y_ref, what="output")
    assert_close(gx, gx_ref, what="grad x")
    assert_close(ours.lora_A.grad, peft_layer.lora_A["default"].weight.grad, what="grad A")


def test_init_is_a_no_op():
    base = nn.Linear(40, 24)
    layer = LoRALinear(base, r=4, alpha=8)
    x = torch.randn(7, 40)
    assert torch.equal(layer(x), base(x))  # B = 0: exactly the frozen layer
    trainable = [n for n, p in layer.named_parameters() if p.requires_grad]
    assert trainable == ["lora_A", "lora_B"]
    assert layer.lora_A.numel() + layer.lora_B.numel() == 4 * (40 + 24)


@pytest.mark.parametrize("in_f,out_f,r,bias", SHAPES)
def test_merge_and_unmerge_match_peft(in_f, out_f, r, bias):
    peft_model, peft_layer, ours = _pair(in_f, out_f, r, bias)
    x = torch.randn(6, in_f)
    w0 = ours.base.weight.detach().clone()
    with torch.no_grad():
        y = ours(x)
        ours.merge()
        assert_close(ours(x), y, atol=1e-5, what="merged output")
        peft_layer.merge()
        assert_close(ours.base.weight, peft_layer.base_layer.weight, what="merged weight")
        ours.unmerge()
    assert_close(ours.base.weight, w0, what="unmerged weight")


def test_add_adapters_replaces_only_targets_and_freezes_the_rest():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    model.q, model.k = nn.Linear(8, 8), nn.Linear(8, 8)  # named children that match
    add_adapters(model, ["q"], r=2, alpha=4)
    assert isinstance(model.q, LoRALinear) and isinstance(model.k, nn.Linear)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"q.lora_A", "q.lora_B"}
