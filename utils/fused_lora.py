"""The adapter's output added inside the matmul: `fused_lora: true`, less peak memory at no cost in speed.

peft's LoRA linear computes  y = W x + s · B (A x)  from two matmul outputs, W x and B (A x), which a compiled layer
adds inside whatever reads y next; the backward of a checkpointed layer then keeps both parts wherever it needs y
(SiLU's inputs, for instance). torch.addmm(W x, A x, Bᵀ, alpha=s) writes the sum as one tensor, so the backward keeps
one tensor where it kept two, and the gradient reaching A x is s · (dy B), scaled at rank r, not at the output's
width.

DoRA (use_dora with factored_dora_norm) scales each output row of the adapted weight by g = m / ||W + sBA||:
    y = g ⊙ (W x + s · B A x) + bias
peft computes it as (g - 1) ⊙ (W x) + g ⊙ s · B A x added to W x + bias, and keeps both W x and B A x for the
backward. Here g goes onto the weights instead: y = x (g ⊙ W)ᵀ + s · (A x)(g ⊙ B)ᵀ, one matmul and one in-place
addmm, with g applied to out x in and out x r numbers rather than to the tokens x out output (at the Qwen2.5-0.5B
shape a layer's outputs for T tokens are about T / 1,200 times its weights). The backward keeps y: dy goes to the
scaled weights as it is, and g's gradient, the column sum of dy ⊙ z with z = W x + s · B A x, is the column sum of
dy ⊙ y divided by g. So the output-wide elementwise work of DoRA is one product in the backward, where scaling the
output costs a pass in each forward (twice under checkpointing) and one more in the backward
(DoraWithScaledWeights). A compiled layer keeps g ⊙ W for the backward rather than scaling W again (utils/memory.py
counts it). A 4-bit base cannot be scaled in place of its output, and a micro-batch with fewer tokens than W has
input features writes fewer numbers by scaling the output: there the sum is one addmm and the scale one
elementwise op after it.

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


class DoraWithScaledWeights(torch.autograd.Function):
    """y = g ⊙ (W x + s · B h) as x (g ⊙ W)ᵀ + s · h (g ⊙ B)ᵀ: the scale g (one per output feature) is applied to
    the frozen weight and to B, out x in and out x r numbers, instead of to the output, tokens x out. The backward
    hands dy to the scaled weights (no dy ⊙ g pass) and takes g's gradient, Σ_tokens dy ⊙ z with z = y / g, from the
    saved output: one reduction over dy and y (a magnitude of exactly 0 would leave that division undefined; DoRA
    starts each magnitude at its row's norm). W gets no gradient (the base is frozen)."""

    @staticmethod
    def forward(ctx, rows, h, weight, b, g, scaling):
        col = g.to(rows.dtype)[:, None]
        y = torch.mm(rows, (weight.to(rows.dtype) * col).t())
        add_lora_(y, h, b * col, scaling)
        ctx.save_for_backward(h, weight, b, col, y)
        ctx.scaling = scaling
        return y

    @staticmethod
    def backward(ctx, dy):
        h, weight, b, col, y = ctx.saved_tensors
        s = ctx.scaling
        d_rows = torch.mm(dy, weight.to(dy.dtype) * col)
        d_h = torch.mm(dy, b * col).mul_(s)
        d_b = torch.mm(dy.t(), h).mul_(col * s)
        d_g = (dy * y).sum(0, dtype=torch.float32) / col.squeeze(1).float()  # Σ dy ⊙ z, z = y / g
        return d_rows, d_h, None, d_b, d_g, None


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
        if dora is not None and self._scales_weights(rows):
            return self._dora_with_scaled_weights(x, rows, lora_a, lora_b, scaling, dora)
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

    def _scales_weights(self, rows) -> bool:
        """DoRA scales W itself where W is a plain frozen matrix (not 4-bit) and is the smaller of the two: at least
        as many tokens as input features (a forward, its recompute and the backward each scale W once: ~12 bytes per
        weight, where scaling the output reads or writes ~14 bytes per output number, and a token has `in` weights
        per output feature)."""
        base = self.get_base_layer()
        return (type(base) is torch.nn.Linear and not base.weight.requires_grad
                and rows.shape[0] >= base.in_features)

    def _dora_with_scaled_weights(self, x, rows, lora_a, lora_b, scaling, dora):
        base = self.get_base_layer()
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        h = lora_a(self._cast_input_dtype(rows, lora_a.weight.dtype)).to(dtype)
        g = dora.scale(dtype, lora_a.weight, lora_b.weight, scaling, base)
        y = DoraWithScaledWeights.apply(rows.to(dtype), h, base.weight, lora_b.weight.to(dtype), g, scaling)
        if base.bias is not None:
            y = y + base.bias.to(dtype)
        return y.view(*x.shape[:-1], y.shape[-1])

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
