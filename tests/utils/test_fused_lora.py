"""fused_lora: the adapter added inside the matmul gives peft's loss and gradients, for LoRA and factored DoRA, eager
and compiled, and falls back to peft's forward where it does not apply."""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from torch._inductor.utils import run_and_get_code
from torch.utils._python_dispatch import TorchDispatchMode

from tests.conftest import loss_and_grads, packed_batch, tiny_qwen2
from utils.fused_lora import FusedLoraForward
from utils.model import apply_peft, compile_layers


def _args(**kw):
    base = dict(train_mode="lora", lora_rank=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules=None,
                use_dora=False, factored_dora_norm=False, fused_lora=False, use_rslora=False,
                init_lora_weights=False, train_new_tokens=False, compile_layers=False)
    return SimpleNamespace(**{**base, **kw})  # init_lora_weights False: B random, so s·BA is not zero


def _pair(**kw):
    """peft's model and the same adapters with fused_lora (DoRA: both on the factored norm)."""
    dora = dict(use_dora=True, factored_dora_norm=True) if kw.pop("dora", False) else {}
    plain = apply_peft(tiny_qwen2(), _args(**dora, **kw))
    fused = apply_peft(tiny_qwen2(), _args(**dora, **kw, fused_lora=True))
    fused.load_state_dict(plain.state_dict())
    return plain, fused


def _assert_same_training(plain, fused, steps=2, atol=1e-6):
    for m in (plain, fused):
        m.train()
    for step in range(steps):
        ref_loss, ref_grads = loss_and_grads(plain, packed_batch(step), seed=step)
        loss, grads = loss_and_grads(fused, packed_batch(step), seed=step)
        torch.testing.assert_close(loss, ref_loss, atol=atol, rtol=1e-5)
        assert grads.keys() == ref_grads.keys() and grads
        for name, grad in ref_grads.items():
            torch.testing.assert_close(grads[name], grad, atol=atol, rtol=1e-4, msg=name)


class _CountInPlaceAdds(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += func is torch.ops.dojo.add_lora_.default
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("dora,dropout", [(False, 0.0), (False, 0.1), (True, 0.0)])
def test_fused_lora_matches_peft_loss_and_gradients(dora, dropout):
    plain, fused = _pair(dora=dora, lora_dropout=dropout)
    assert sum(isinstance(m, FusedLoraForward) for m in fused.modules()) == 2 * 7  # every adapted linear
    _assert_same_training(plain, fused)
    with torch.no_grad(), _CountInPlaceAdds() as counted:
        fused(**packed_batch())
    assert counted.calls == 2 * 7  # the fused forward ran in every adapted linear (no fallback to peft's)


def test_fused_dora_scales_the_sum_not_the_bias():
    """Qwen's q, k and v projections have a bias, which DoRA leaves unscaled: with a large bias and a magnitude far
    from the norm, an output that scaled the bias would differ from peft's."""
    plain, fused = _pair(dora=True)
    with torch.no_grad():
        for model in (plain, fused):
            torch.manual_seed(3)
            for name, p in model.named_parameters():
                if name.endswith("q_proj.base_layer.bias"):
                    p.normal_(0, 5.0)
                if "lora_magnitude_vector" in name:
                    p.mul_(1.7)
    _assert_same_training(plain, fused, steps=1, atol=1e-5)


class _OutputWideOps(TorchDispatchMode):
    """The elementwise ops that write a tensor as large as a linear's output (tokens x out_features)."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.ops = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if torch.Tag.pointwise in func.tags and torch.is_tensor(out) and out.numel() == self.numel:
            self.ops.append(str(func))
        return out


def test_fused_dora_scales_the_weights_not_the_output():
    """With more tokens than input features, DoRA's per-feature scale goes onto W and B (out x in numbers): the
    forward writes nothing output-wide besides the matmul, and the backward one product (dy ⊙ y, for the
    magnitude's gradient). With fewer, the output is scaled (one product in the forward, two in the backward)."""
    _, fused = _pair(dora=True)
    linear = fused.base_model.model.model.layers[0].mlp.up_proj
    mul = "aten.mul.Tensor"
    for tokens, forward_products, backward_products in ((linear.in_features + 1, [], [mul]),
                                                         (linear.in_features - 1, [mul], [mul, mul])):
        x = torch.randn(1, tokens, linear.in_features, requires_grad=True)
        with _OutputWideOps(tokens * linear.out_features) as forward:
            y = linear(x)
        with _OutputWideOps(tokens * linear.out_features) as backward:
            y.backward(torch.randn_like(y))
        assert forward.ops == forward_products and backward.ops == backward_products
    assert linear.lora_magnitude_vector["default"].weight.grad is not None


def test_fused_lora_falls_back_to_peft_with_dora_dropout_and_when_merged():
    """DoRA with dropout (peft adds a base matmul of the dropped-out input) and a merged adapter run peft's forward
    unchanged."""
    plain, fused = _pair(dora=True, lora_dropout=0.1)
    _assert_same_training(plain, fused)
    plain, fused = _pair()
    for m in (plain, fused):
        m.eval()
    with torch.no_grad():
        expected = plain(**packed_batch()).logits
        fused.merge_adapter()
        torch.testing.assert_close(fused(**packed_batch()).logits, expected, atol=1e-5, rtol=1e-5)
        fused.unmerge_adapter()
        torch.testing.assert_close(fused(**packed_batch()).logits, expected, atol=1e-6, rtol=1e-5)
        with plain.disable_adapter():
            base = plain(**packed_batch()).logits
        with fused.disable_adapter():
            torch.testing.assert_close(fused(**packed_batch()).logits, base)
        assert not torch.allclose(base, expected)


def test_fused_lora_saves_and_merges_as_peft(tmp_path):
    """The class swap is invisible to peft: the saved adapter equals peft's, and merge_and_unload leaves plain
    linears computing what the fused forward computed."""
    plain, fused = _pair(dora=True)
    fused.eval()
    with torch.no_grad():
        logits = fused(**packed_batch()).logits
    fused.save_pretrained(tmp_path / "fused")
    plain.save_pretrained(tmp_path / "plain")
    from safetensors.torch import load_file
    saved, expected = (load_file(tmp_path / name / "adapter_model.safetensors") for name in ("fused", "plain"))
    assert saved.keys() == expected.keys()
    for key in saved:
        torch.testing.assert_close(saved[key], expected[key])
    merged = fused.merge_and_unload()
    assert not any(isinstance(m, FusedLoraForward) for m in merged.modules())
    with torch.no_grad():
        torch.testing.assert_close(merged(**packed_batch()).logits, logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dora", [False, True])
def test_compiled_fused_lora_matches_eager_peft(dora):
    """Under compile_layers (CPU inductor), with activation checkpointing: peft's eager loss and gradients."""
    torch._dynamo.reset()
    plain, fused = _pair(dora=dora)
    compile_layers(fused, SimpleNamespace(compile_layers=True))
    for m in (plain, fused):
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    _assert_same_training(plain, fused, steps=2, atol=1e-5)


def test_compiled_fused_lora_adds_into_the_base_output_without_a_copy():
    """What the custom op is for: inductor rewrites an in-place addmm_ as a copy of the base output and an addmm;
    dojo::add_lora_ runs on the buffer the base matmul wrote, with no copy in between."""
    torch._dynamo.reset()
    _, fused = _pair()
    compile_layers(fused, SimpleNamespace(compile_layers=True))
    fused.train()
    _, codes = run_and_get_code(lambda: loss_and_grads(fused, packed_batch(0), seed=0))
    forward = next(code for code in codes if "add_lora_" in code)
    adds = re.findall(r"torch\.ops\.dojo\.add_lora_\.default\((buf\d+),", forward)
    assert len(adds) == 7  # every adapted linear of the layer
    for buf in adds:
        assert re.search(rf"extern_kernels\.(?:mm|addmm)\([^\n]*out={buf}\)", forward), f"{buf} is not the base matmul's output"


def test_fused_lora_needs_lora_and_with_dora_the_factored_norm():
    from train_args.base import TrainArgs
    with pytest.raises(ValueError, match="fused_lora: needs train_mode lora or qlora"):
        TrainArgs(output_dir="unused", fused_lora=True, train_mode="full", report_to="none")
    with pytest.raises(ValueError, match="factored_dora_norm: must be true with fused_lora and use_dora"):
        TrainArgs(output_dir="unused", fused_lora=True, use_dora=True, report_to="none")
    with pytest.raises(ValueError, match="lora_dropout: must be 0 with fused_lora and use_dora"):
        TrainArgs(output_dir="unused", fused_lora=True, use_dora=True, factored_dora_norm=True, lora_dropout=0.05,
                  report_to="none")
    TrainArgs(output_dir="unused", fused_lora=True, use_dora=True, factored_dora_norm=True, lora_dropout=0.0,
              report_to="none")
    TrainArgs(output_dir="unused", fused_lora=True, lora_dropout=0.05, report_to="none")  # LoRA takes dropout
