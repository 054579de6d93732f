"""Helpers shared by the llm_tricks tests: build the peft reference and compare tensors strictly."""

from collections import OrderedDict

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

ATOL = 1e-6  # the equality bar of the issue: max abs diff <= 1e-6 in fp32


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().float() - b.detach().float()).abs().max().item()


def assert_close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL, what: str = "") -> None:
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    d = max_diff(a, b)
    assert d <= atol, f"{what}: max abs diff {d:.3g} > {atol:g}"


def peft_linear(in_features: int, out_features: int, bias: bool = True, **lora_kwargs):
    """A one-layer model wrapped by peft. Returns (peft_model, peft lora.Linear, copy of the original nn.Linear)."""
    linear = nn.Linear(in_features, out_features, bias=bias)
    original = nn.Linear(in_features, out_features, bias=bias)
    original.load_state_dict(linear.state_dict())  # peft may rewrite W0 (PiSSA), keep the original aside
    model = nn.Sequential(OrderedDict(proj=linear))
    peft_model = get_peft_model(model, LoraConfig(target_modules=["proj"], **lora_kwargs))
    return peft_model, peft_model.base_model.model.proj, original


def copy_adapter_from_peft(ours, peft_layer, adapter: str = "default") -> None:
    """Put peft's W0, b, A and B into our layer (same layout: A is (r, in), B is (out, r))."""
    with torch.no_grad():
        ours.base.weight.copy_(peft_layer.base_layer.weight)
        if ours.base.bias is not None:
            ours.base.bias.copy_(peft_layer.base_layer.bias)
        ours.lora_A.copy_(peft_layer.lora_A[adapter].weight)
        ours.lora_B.copy_(peft_layer.lora_B[adapter].weight)


def forward_backward(layer, x: torch.Tensor, grad_out: torch.Tensor, seed: int | None = None):
    """Run y = layer(x), backprop <y, grad_out>; returns (y, dL/dx). A seed makes dropout masks reproducible."""
    x = x.clone().requires_grad_(True)
    with torch.random.fork_rng(devices=[]):  # the seed must not make later draws in the session deterministic
        if seed is not None:
            torch.manual_seed(seed)
        y = layer(x)
    (y * grad_out).sum().backward()
    return y.detach(), x.grad
