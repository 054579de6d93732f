"""Checkpointed layers' inputs wait in host memory: `offload_checkpoints: true` (unsloth's offloaded checkpointing).

With activation checkpointing, what stays on the GPU between a layer's forward and its backward is the layer's input:
layers x tokens x hidden x 2 bytes (bf16), the part of the peak that grows with the context while the weights stay
put. Non-reentrant checkpointing (torch.utils.checkpoint) saves that input as a saved tensor of its own, outside the
layer, so saved-tensor hooks around the checkpoint call see exactly that input and nothing inside the layer. Here
they copy it into pinned host memory in the forward and back in the backward (the recompute then runs as before).

Both copies are queued on the compute stream without making the host wait (non_blocking): the host goes on
launching the next layer, and the GPU runs each copy in order with the layer's kernels, so a step pays the transfer
time, about 2 x bytes / host-link bandwidth, and no synchronisation. transformers has the same switch
(activation_checkpointing_kwargs offload, torch's save_on_cpu), whose device-to-host copy blocks the host at every
layer and which fails on a machine without an accelerator; train_args refuses it and points here.

Under cuda_graphs the copies are captured into each graph: pinned host memory allocated during a capture stays
with the graph (torch's host allocator keeps a private pool per capture), and a replay copies through the same
addresses (tests/utils/test_offload.py replays the eager losses on a GPU). On a CPU-only run there is nothing to
move: the hooks leave tensors where they are.
"""
from __future__ import annotations

import functools

import torch
from transformers import TrainerCallback


def _to_host(tensor: torch.Tensor):
    if tensor.device.type != "cuda":
        return tensor
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)  # ordered on the stream before anything reuses the GPU block
    return tensor.device, host


def _to_device(packed):
    if torch.is_tensor(packed):
        return packed
    device, host = packed
    return host.to(device, non_blocking=True)


def offloaded(checkpoint_fn):
    """checkpoint_fn (a layer's _gradient_checkpointing_func) with the inputs it saves held in host memory."""
    @functools.wraps(checkpoint_fn)
    def run(function, *args, **kwargs):
        with torch.autograd.graph.saved_tensors_hooks(_to_host, _to_device):
            return checkpoint_fn(function, *args, **kwargs)
    run.offloads_inputs = True
    return run


class OffloadsCheckpointInputs:
    """Mixed in before a decoder layer's class: whatever checkpoint function the layer is given is offloaded(). A
    property, not a one-time wrap, because the function is set again each time checkpointing is enabled, and trl's
    DPO disables and re-enables it around every reference forward."""

    @property
    def _gradient_checkpointing_func(self):
        try:
            return self.__dict__["_offloading_checkpoint_func"]
        except KeyError:
            raise AttributeError("_gradient_checkpointing_func") from None  # checkpointing never enabled

    @_gradient_checkpointing_func.setter
    def _gradient_checkpointing_func(self, checkpoint_fn):
        if not getattr(checkpoint_fn, "offloads_inputs", False):
            checkpoint_fn = offloaded(checkpoint_fn)
        self.__dict__["_offloading_checkpoint_func"] = checkpoint_fn


_OFFLOADING_CLASSES: dict[type, type] = {}


def offload_checkpoint_inputs(model) -> int:
    """Make every decoder layer offload the inputs it saves when it checkpoints (transformers' every_n_layers
    leaves the others' activations alone: they do not call the function). The class is swapped in place, as
    fused_lora does. Returns how many layers checkpoint now."""
    from transformers.modeling_layers import GradientCheckpointingLayer
    for layer in model.modules():
        if not isinstance(layer, GradientCheckpointingLayer) or isinstance(layer, OffloadsCheckpointInputs):
            continue
        cls = type(layer)
        if cls not in _OFFLOADING_CLASSES:
            _OFFLOADING_CLASSES[cls] = type("Offloading" + cls.__name__, (OffloadsCheckpointInputs, cls), {})
        given = layer.__dict__.pop("_gradient_checkpointing_func", None)  # the class's property takes over
        layer.__class__ = _OFFLOADING_CLASSES[cls]
        if given is not None:
            layer._gradient_checkpointing_func = given
    return sum(1 for layer in model.modules()
               if isinstance(layer, OffloadsCheckpointInputs) and layer.gradient_checkpointing)


class OffloadCheckpointInputs(TrainerCallback):
    """At the start of training, once the Trainer has enabled checkpointing (it sets each layer's checkpoint
    function then), offload the inputs of the layers that checkpoint."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not offload_checkpoint_inputs(model):
            raise ValueError(f"offload_checkpoints: no layer of {type(model).__name__} checkpoints, so there is no "
                             "layer input to offload: set activation_checkpointing true")


def offload_callbacks(offload: bool) -> list:
    """The trainer callbacks of a run whose plan offloads (StepPlan.offload)."""
    return [OffloadCheckpointInputs()] if offload else []
