"""Variable-length attention for padding-free batches: `attn_implementation="varlen"`.

A padding-free micro-batch is one row holding several samples. transformers' sdpa path rebuilds a [T, T]
block-diagonal mask from the restarting position ids on every step and runs the masked kernel over all T x T
scores, so attention work grows with the square of the whole row. Flash attention's variable-length kernel takes the
sample boundaries instead (`cu_seq_lens_q`, cumulative lengths, which PaddingFreeCollator emits) and computes each
sample against itself only. torch >= 2.10 ships that kernel as `torch.nn.attention.varlen.varlen_attn` (CUDA, bf16 or
fp16). Elsewhere (CPU, fp32) the same boundaries build the block mask for sdpa: the same numbers, so the CPU tests
compare this path with transformers' own.

Nothing here synchronises with the host (the boundaries are a device tensor, the longest sample a Python int), so
the path can be captured in a CUDA graph (utils/cuda_graphs.py).
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

NAME = "varlen"


def _flash_varlen_kwargs() -> dict | None:
    """The causal / GQA keywords of this torch's varlen_attn (its signature changed between 2.10 and 2.13)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    kwargs = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    if "enable_gqa" in params:
        kwargs["enable_gqa"] = True
    return kwargs


FLASH_KWARGS = _flash_varlen_kwargs()


def sample_ids(cu_seq_lens: torch.Tensor, total: int) -> torch.Tensor:
    """Which sample each of the `total` packed tokens belongs to, from the cumulative lengths [0, l1, l1+l2, ...]."""
    positions = torch.arange(total, device=cu_seq_lens.device)
    return torch.searchsorted(cu_seq_lens[1:].to(positions.dtype), positions, right=True)


def masked_varlen(q, k, v, cu_seq_lens, scale):
    """Reference path: sdpa over the whole row with a causal block-diagonal mask. q, k, v: [T, heads, head_dim]."""
    ids = sample_ids(cu_seq_lens, q.shape[0])
    mask = (ids[:, None] == ids[None, :]).tril()
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask,
                                         scale=scale, enable_gqa=k.shape[1] != q.shape[1])
    return out.transpose(0, 1)


def varlen_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, sliding_window=None,
                     softcap=None, cu_seq_lens_q=None, max_length_q=None, **kwargs):
    """transformers attention interface: query [1, heads, T, head_dim] (key/value may have fewer heads, GQA);
    returns [1, T, heads, head_dim] and no weights."""
    if cu_seq_lens_q is None:
        raise ValueError("attn_implementation varlen needs padding_free batches (the collator's cu_seq_lens_q)")
    if query.shape[0] != 1:
        raise ValueError(f"attn_implementation varlen expects one packed row, got a batch of {query.shape[0]}")
    if dropout or sliding_window is not None or softcap is not None:
        raise ValueError("attn_implementation varlen supports neither attention dropout, sliding windows nor "
                         "logit soft-capping; use sdpa for this model")
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [T, heads, head_dim]
    if q.is_cuda and torch.is_autocast_enabled("cuda"):  # as autocast runs sdpa (QLoRA's fp32 norms feed fp32 q)
        q, k, v = (x.to(torch.get_autocast_dtype("cuda")) for x in (q, k, v))
    if FLASH_KWARGS is not None and q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        from torch.nn.attention.varlen import varlen_attn
        if "enable_gqa" not in FLASH_KWARGS and k.shape[1] != q.shape[1]:
            k, v = (x.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for x in (k, v))
        out = varlen_attn(q, k, v, cu_seq_lens_q, cu_seq_lens_q, max_length_q, max_length_q, scale=scaling,
                          **FLASH_KWARGS)
    else:
        out = masked_varlen(q, k, v, cu_seq_lens_q, scaling)
    return out.unsqueeze(0), None


AttentionInterface.register(NAME, varlen_attention)
