"""DoRA's weight norm without building the adapted weight: `factored_dora_norm: true`.

DoRA scales each output row of W + s·BA by m / ||W + s·BA|| (the norm a constant for autograd, as in the paper's
section 4.3). peft computes that norm in every forward (and again in a checkpoint's recompute) by building the
whole adapted weight: BA through an identity matmul, then W + s·BA, then the row norms -- several passes over an
(out x in) matrix per adapted linear, the part of DoRA's cost that LoRA lacks besides a rescale of the output.

Expanding the square needs none of that (row i; A is r x in, B is out x r):
    ||W_i + s·(BA)_i||² = ||W_i||² + 2s·<B_i, (W Aᵀ)_i> + s²·B_i (A Aᵀ) B_iᵀ
||W_i||² never changes (the base is frozen) and is computed once; W Aᵀ is one skinny matmul that reads W once;
A Aᵀ is r x r. So each forward reads W once instead of writing and reading several out x in temporaries.

Once per forward of the decoder, not per layer call: the norm is a constant for autograd and W, A, B cannot change
inside a forward, so a hook before the decoder stack refreshes every layer's norm into a buffer, which the layers
read. Under activation checkpointing each layer runs twice (forward and recompute); peft computes the norm in both.

Only the norm changes: the rest of the forward is peft's (same inputs, outputs and dtypes), so saving, merging
and loading adapters are untouched. tests/utils/test_factored_dora_norm.py checks loss and gradients against
peft's path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from peft.tuners.lora.dora import DoraLinearLayer
from peft.utils.integrations import dequantize_module_weight


def factored_row_norm(weight, weight_sq_norm, lora_a, lora_b, scaling: float) -> torch.Tensor:
    """||W + scaling·B A|| per row, in fp32, from W Aᵀ (one pass over W) and the cached ||W||² rows."""
    a = lora_a.float()
    b = lora_b.float()
    w_at = (weight @ a.to(weight.dtype).T).float()  # (out, r): the only read of W
    cross = (b * w_at).sum(dim=1)
    quad = ((b @ (a @ a.T)) * b).sum(dim=1)
    return (weight_sq_norm + 2 * scaling * cross + scaling * scaling * quad).clamp_min(0).sqrt()


class FactoredNormDora(DoraLinearLayer):
    """peft's DoRA linear layer with the row norm of `factored_row_norm`; ||W||² rows cached in a buffer. row_norm:
    the norm the decoder stack's pre-hook wrote before this forward of the decoder (None outside a refreshed decoder stack:
    computed here)."""

    weight_sq_norm: torch.Tensor
    row_norm: torch.Tensor | None

    def scale(self, dtype, lora_a_weight, lora_b_weight, scaling, base_layer) -> torch.Tensor:
        """g = m / ||W + s·BA|| per output row; the norm a constant for autograd, as in peft."""
        norm = self.row_norm
        if norm is None:
            with torch.no_grad():
                weight = dequantize_module_weight(base_layer).to(dtype)
                norm = factored_row_norm(weight, self.weight_sq_norm, lora_a_weight, lora_b_weight, scaling)
        return self.weight / norm.to(dtype)

    def forward(self, x, *, lora_A, lora_B, scaling, base_layer, base_result=None, adapter_name="default"):
        mag_norm_scale = self.scale(x.dtype, lora_A.weight, lora_B.weight, scaling, base_layer).view(1, -1)
        lora_result = lora_B(lora_A(x))
        if base_result is not None:
            if base_layer.bias is not None:
                base_result = base_result - base_layer.bias
        else:  # lora dropout: the base output of the dropped-out input
            base_result = F.linear(x, dequantize_module_weight(base_layer).to(x.dtype))
        return (mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result * scaling


def _row_norms_into(weights, sq_norms, lora_as, lora_bs, scalings, outs) -> None:
    """One decoder layer's DoRA row norms, written into their buffers. Eager, that is a dozen small kernels per
    adapted linear; under compile_layers it is compiled (compile_norm_refresh): one graph serves every layer, whose
    shapes are the same, and fuses each linear's elementwise work after its two skinny matmuls."""
    for weight, sq_norm, a, b, scaling, out in zip(weights, sq_norms, lora_as, lora_bs, scalings, outs):
        out.copy_(factored_row_norm(weight, sq_norm, a, b, scaling))


def _refresh_before_stack(stack, _inputs) -> None:
    """The forward pre-hook of the decoder stack: each layer's current row norms into their row_norm buffers, from
    its (lora module, adapter, DoRA layer) group (no autograd)."""
    with torch.no_grad():
        for group in stack._dora_norm_groups:
            stack._dora_row_norms_into([dequantize_module_weight(module.get_base_layer()) for module, _, _ in group],
                                       [dora.weight_sq_norm for _, _, dora in group],
                                       [module.lora_A[name].weight for module, name, _ in group],
                                       [module.lora_B[name].weight for module, name, _ in group],
                                       [module.scaling[name] for module, name, _ in group],
                                       [dora.row_norm for _, _, dora in group])


def compile_norm_refresh(model) -> None:
    """compile_layers: compile the refresh of each layer's norms as the layers are compiled (nothing to do when the
    model has no refreshed DoRA layers)."""
    stack = decoder_stack(model)
    if stack is not None and hasattr(stack, "_dora_norm_groups"):
        stack._dora_row_norms_into = torch.compile(_row_norms_into, dynamic=False)


def decoder_stack(model):
    """The module that runs the decoder layers (a model's `model.model`): the parent of the ModuleList of
    transformers' GradientCheckpointingLayer; None when there is none."""
    from transformers.modeling_layers import GradientCheckpointingLayer
    for module in model.modules():
        for child in module.children():
            if isinstance(child, torch.nn.ModuleList) and any(isinstance(m, GradientCheckpointingLayer)
                                                              for m in child):
                return module
    return None


def use_factored_dora_norm(model) -> int:
    """Switch every DoRA linear layer of a peft model to the factored norm; returns how many were switched. Those
    inside the decoder stack get their norm refreshed once per forward of the stack (a forward pre-hook).

    Layers that store W transposed (fan_in_fan_out, GPT-2's Conv1D) keep peft's forward."""
    stack = decoder_stack(model)
    layers = [layer for child in (stack.children() if stack is not None else ())
              if isinstance(child, torch.nn.ModuleList) for layer in child]
    groups = {id(layer): [] for layer in layers}  # each decoder layer's refreshed DoRA linears, in stack order
    layer_of = {id(m): id(layer) for layer in layers for m in layer.modules()}
    switched = 0
    for module in model.modules():
        magnitudes = getattr(module, "lora_magnitude_vector", None)
        if not isinstance(magnitudes, torch.nn.ModuleDict):
            continue
        for name, dora in magnitudes.items():
            if type(dora) is not DoraLinearLayer or dora.fan_in_fan_out:
                continue
            with torch.no_grad():
                weight = dequantize_module_weight(module.get_base_layer()).float()
                sq_norm = (weight * weight).sum(dim=1)
            dora.__class__ = FactoredNormDora
            dora.register_buffer("weight_sq_norm", sq_norm.to(dora.weight.device), persistent=False)
            group = groups.get(layer_of.get(id(module)))
            norm = torch.zeros_like(sq_norm, device=dora.weight.device) if group is not None else None
            dora.register_buffer("row_norm", norm, persistent=False)
            switched += 1
            if group is not None:
                group.append((module, name, dora))
    if any(groups.values()):  # kept on the stack, so that a deep copy of the model (trl's reference model)
        # refreshes its own norms
        stack._dora_norm_groups = [group for group in groups.values() if group]
        stack._dora_row_norms_into = _row_norms_into
        stack.register_forward_pre_hook(_refresh_before_stack)
    return switched
