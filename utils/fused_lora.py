"""The adapter's output added inside the matmul: `fused_lora: true`, less peak memory at no cost in speed.

peft's LoRA linear computes  y = W x + s · B (A x)  from two matmul outputs, W x and B (A x), which a compiled layer
adds inside whatever reads y next; the backward of a checkpointed layer then keeps both parts wherever it needs y
(SiLU's inputs, for instance). torch.addmm(W x, A x, Bᵀ, alpha=s) writes the sum as one tensor, so the backward keeps
one tensor where it kept two, and the gradient reaching A x is s · (dy B), scaled at rank r, not at the output's
width.

DoRA (use_dora with factored_dora_norm) scales each output row of the adapted weight by g = m / ||W + sBA||:
    y = g ⊙ (W x + s · B A x) + bias
peft computes it as (g - 1) ⊙ (W x) + g ⊙ s · B A x added to W x + bias, and keeps both W x and B A x for the
backward. Here the sum z = W x + s · B A x is one addmm and the scale one elementwise op after it; the backward keeps
z alone (g's gradient is the column sum of dy ⊙ z) and hands dy ⊙ g to both matmuls.

In place: the sum is written into W x's own buffer (cuBLAS adds into it with beta 1). An out-of-place addmm first
copies W x into a new output, and that copy cost about what the saved elementwise work gained back; in place, the
switch is faster than peft's form as well as leaner (bench/README.md, fourteenth and fifteenth sessions).
Compiled layers keep it in place because the add is a custom op that mutates its input (dojo::add_lora_): inductor
runs such an op on the input's buffer when nothing else reads it, where it rewrites an in-place addmm_ into a copy
and an addmm. Same function and gradients as peft's (tests/utils/test_fused_lora.py), rounded differently: the sum
is rounded once instead of each part.

Only the forward changes; a module that is merged, has adapters disabled, mixes adapters in one batch, runs several
adapters at once or has a bias on B falls back to peft's forward, and saving, merging and loading are peft's.
"""
from __future__ import annotations

import torch
from peft.tuners.lora.layer import LoraLayer

from utils.dora import FactoredNormDora


@torch.library.custom_op("dojo::add_lora_", mutates_args=("out",))
def add_lora_(out: torch.Tensor, h: torch.Tensor, b: torch.Tensor, scaling: float) -> None:
    """out += scaling · h bᵀ, in out's memory."""
    out.addmm_(h, b.t(), alpha=scaling)


class AddLoraInPlace(torch.autograd.Function):
    """z = base + s · h Bᵀ, written into base (which no backward reads: the base layer's backward needs its input
    and weight, not its output). The gradient passes to base unchanged; h and B get s · (dz B) and s · (dzᵀ h)."""

    @staticmethod
    def forward(ctx, base, h, b, scaling):
        add_lora_(base, h, b, scaling)
        ctx.mark_dirty(base)
        ctx.save_for_backward(h, b)
        ctx.scaling = scaling
        return base

    @staticmethod
    def backward(ctx, grad):
        h, b = ctx.saved_tensors
        return grad, torch.mm(grad, b).mul_(ctx.scaling), torch.mm(grad.t(), h).mul_(ctx.scaling), None


class FusedLoraForward:
    """Mixed in before a peft LoRA layer class (lora.Linear, bitsandbytes' Linear4bit): the forward above."""

    def forward(self, x, *args, **kwargs):
        adapter = self._fusable_adapter(args, kwargs)
        if adapter is None:
            return super().forward(x, *args, **kwargs)
        lora_a, lora_b = self.lora_A[adapter], self.lora_B[adapter]
        scaling = self.scaling[adapter]
        dora = self.lora_magnitude_vector[adapter] if adapter in self.lora_magnitude_vector else None
        rows = x.reshape(-1, x.shape[-1])  # 2-D, so that the base output written into is no view
        result = self.base_layer(rows)
        bias = getattr(self.get_base_layer(), "bias", None) if dora is not None else None
        if bias is not None:
            result = result - bias  # DoRA scales W x, not the bias
        h = lora_a(self.lora_dropout[adapter](self._cast_input_dtype(rows, lora_a.weight.dtype)))
        dtype = result.dtype
        z = AddLoraInPlace.apply(result, h.to(dtype), lora_b.weight.to(dtype), scaling)
        if dora is not None:
            z = z * dora.scale(x.dtype, lora_a.weight, lora_b.weight, scaling, self.get_base_layer())
            z = (z if bias is None else z + bias).to(dtype)
        return z.view(*x.shape[:-1], z.shape[-1])

    def _fusable_adapter(self, args, kwargs) -> str | None:
        """The one active adapter when this forward is the plain single-adapter case, else None (peft's forward)."""
        if args or kwargs or self.disable_adapters or self.merged or len(self.active_adapters) != 1:
            return None
        adapter = self.active_adapters[0]
        if adapter not in self.lora_A or (adapter in self.lora_variant and not self._fusable_dora(adapter)):
            return None
        return adapter if self.lora_B[adapter].bias is None else None

    def _fusable_dora(self, adapter) -> bool:
        """DoRA with the factored norm and no dropout (peft's DoRA with dropout adds a base matmul of the dropped-out
        input, which this form does not have)."""
        return (adapter in self.lora_magnitude_vector
                and isinstance(self.lora_magnitude_vector[adapter], FactoredNormDora)
                and isinstance(self.lora_dropout[adapter], torch.nn.Identity))


_FUSED_CLASSES: dict[type, type] = {}


def use_fused_lora(model) -> None:
    """Switch every peft LoRA layer with a fusable forward (a plain lora.Linear or a 4-bit one) to FusedLoraForward.
    The class is swapped in place, so isinstance checks, state dicts, merging and saving see peft's layer."""
    for module in model.modules():
        cls = type(module)
        if not isinstance(module, LoraLayer) or isinstance(module, FusedLoraForward) or not _is_linear(module):
            continue
        if cls not in _FUSED_CLASSES:
            _FUSED_CLASSES[cls] = type("Fused" + cls.__name__, (FusedLoraForward, cls), {})
        module.__class__ = _FUSED_CLASSES[cls]


def _is_linear(module) -> bool:
    """A LoRA layer over a linear map (torch's Linear or bitsandbytes' 4-/8-bit ones): lora_A is a Linear."""
    return all(isinstance(a, torch.nn.Linear) for a in module.lora_A.values()) and hasattr(
        module.get_base_layer(), "out_features") and not getattr(module, "fan_in_fan_out", False)
