"""Training-speed rewrites of two pieces of Etude that keep the math: the tests check each against the plain form.

`fused_linear` runs the layers that read the same input (q/k/v; SwiGLU's gate/up) as one matmul, and
`scatter_free_cross_entropy` writes the loss so that its gradient needs no logits-sized zero fill. Both are
switched by EtudeConfig (`fuse_projections`, `scatter_free_loss`); bench/etude_bench.py measures them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fused_linear(x, projections: tuple[nn.Linear, ...], fuse: bool):
    """Apply several Linear layers that read the same input, as one matmul over their stacked weights.

    Why: one wide GEMM keeps the GPU busier than three narrow ones, and backward computes the input
    gradient once instead of three times plus two adds. The parameters stay separate (checkpoints,
    LoRA targets and names are unchanged) and autograd splits the stacked weight's gradient back.
    Only plain, hook-free nn.Linear layers in training are fused: a LoRA or 4-bit wrapper must run its
    own forward, and in generation the copy of the weights would cost more than it saves."""
    plain = all(type(p) is nn.Linear and not (p._forward_hooks or p._forward_pre_hooks) for p in projections)
    if not (fuse and plain and torch.is_grad_enabled()):
        return tuple(p(x) for p in projections)
    weight = torch.cat([p.weight for p in projections])
    bias = torch.cat([p.bias for p in projections]) if projections[0].bias is not None else None
    return F.linear(x, weight, bias).split([p.out_features for p in projections], dim=-1)


def scatter_free_cross_entropy(logits, labels, ignore_index: int = -100, reduction: str = "mean"):
    """Token cross-entropy, logsumexp(z) - z[label], written for torch.compile.

    Why: F.cross_entropy picks z[label] with a gather, whose backward scatters into a zero tensor as large as
    the logits (61,440 x 50,304 at nanoGPT's batch: a 6 GB fill and a re-read) before the softmax gradient.
    Picking z[label] by comparing the column index with the label instead makes the gradient a pure
    elementwise expression, softmax(z) - (column == label), which inductor fuses into one pass over the
    logits. In eager mode the comparison would be materialised at the logits' size: use F.cross_entropy there."""
    z = logits.float()
    hit = torch.arange(z.shape[-1], device=z.device) == labels.unsqueeze(-1)
    valid = labels != ignore_index
    token_loss = torch.where(valid, torch.logsumexp(z, dim=-1) - torch.where(hit, z, 0.0).sum(-1), 0.0)
    if reduction == "sum":
        return token_loss.sum()
    return token_loss.sum() / valid.sum().clamp(min=1)
