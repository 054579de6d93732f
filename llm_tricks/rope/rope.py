"""Rotary position embeddings (RoPE) in plain PyTorch, in the layout of Llama / Qwen2 in transformers.

Su et al. (2021), "RoFormer: Enhanced Transformer with Rotary Position Embedding", arXiv:2104.09864.

Split a head of dimension d into d/2 pairs and rotate pair i of the token at position m by the angle
m * theta_i, with theta_i = base^(-2i/d) (base = rope_theta, 10000 in the paper, 1e6 in Qwen2.5).
A rotation preserves norms, and rotations compose, so for a query at position m and a key at n:

    <R(m) q, R(n) k> = <q, R(n - m) k>

The attention score depends on the positions only through the offset n - m. Nothing is added to the
embeddings; low pairs (small i) rotate fast and resolve nearby positions, high pairs rotate slowly
and carry long-range position.

Which coordinates form a pair is a convention. The paper (and Meta's original Llama code) pairs
neighbours (x0, x1), (x2, x3), ...; transformers pairs the two halves (x_i, x_{i + d/2}), so a
rotation reads "x * cos + rotate_half(x) * sin". The two are the same rotation up to a fixed
permutation of the head dimensions, which is why checkpoints converted between them permute the
q/k projection weights. We implement the half layout so the result equals Qwen2's exactly.
"""

import torch


def inverse_frequencies(head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """theta_i = base^(-2i/d) for i = 0 .. d/2 - 1 (float32, computed as transformers does)."""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, base: float = 10000.0):
    """cos and sin of m * theta_i, shape (batch, seq, head_dim): each angle twice, once per half."""
    angles = position_ids[..., None].float() * inverse_frequencies(head_dim, base).to(position_ids.device)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (batch, heads, seq, head_dim): pair i is (x[..., i], x[..., i + d/2]).

    (a, b) -> (a cos - b sin, b cos + a sin), the 2-D rotation by the angle, written per half.
    """
    cos, sin = cos.unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype)  # broadcast over heads
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    rotated_half = torch.cat([-b, a], dim=-1)  # "rotate_half" in transformers
    return x * cos + rotated_half * sin


def apply_rope_interleaved(x: torch.Tensor, position_ids: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """The paper's layout, with complex numbers: pairs (x0, x1), (x2, x3), ... are rotated by e^{i m theta}."""
    z = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # (..., d/2) complex
    angles = position_ids[..., None].float() * inverse_frequencies(x.shape[-1], base)
    rotation = torch.polar(torch.ones_like(angles), angles).unsqueeze(1)  # (batch, 1, seq, d/2)
    return torch.view_as_real(z * rotation).reshape(x.shape).to(x.dtype)
