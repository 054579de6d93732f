"""Our RoPE == transformers' Qwen2RotaryEmbedding + apply_rotary_pos_emb, and the properties the README states."""

import pytest
import torch
from transformers import Qwen2Config
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as llama_apply
from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding, apply_rotary_pos_emb
from tricks_testutils import assert_close

from llm_tricks.rope.rope import apply_rope, apply_rope_interleaved, inverse_frequencies, rope_cos_sin


@pytest.mark.parametrize("heads,head_dim,base", [(2, 8, 10000.0), (4, 64, 1_000_000.0), (3, 128, 500_000.0)])
def test_matches_qwen2_rotary(heads, head_dim, base):
    config = Qwen2Config(
        hidden_size=heads * head_dim, num_attention_heads=heads, num_key_value_heads=heads, rope_theta=base
    )
    hf_rope = Qwen2RotaryEmbedding(config)
    batch, seq = 2, 11
    q, k = torch.randn(batch, heads, seq, head_dim), torch.randn(batch, heads, seq, head_dim)
    position_ids = torch.randint(0, 4096, (batch, seq))  # arbitrary (also non-monotonic) positions
    cos_ref, sin_ref = hf_rope(q, position_ids)
    cos, sin = rope_cos_sin(position_ids, head_dim, base)
    assert_close(cos, cos_ref, what="cos")
    assert_close(sin, sin_ref, what="sin")
    q_ref, k_ref = apply_rotary_pos_emb(q, k, cos_ref, sin_ref)
    assert_close(apply_rope(q, cos, sin), q_ref, what="q")
    assert_close(apply_rope(k, cos, sin), k_ref, what="k")
    assert_close(apply_rope(q, cos, sin), llama_apply(q, k, cos_ref, sin_ref)[0], what="llama q")


def test_scores_depend_only_on_the_offset():
    d = 32
    q, k = torch.randn(1, 1, 1, d), torch.randn(1, 1, 1, d)

    def score(m, n):
        cq, sq = rope_cos_sin(torch.tensor([[m]]), d)
        ck, sk = rope_cos_sin(torch.tensor([[n]]), d)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    assert_close(score(3, 10), score(103, 110), atol=1e-4, what="same offset 7")
    assert_close(score(0, 0), (q * k).sum(), atol=1e-5, what="offset 0 is the plain dot product")
    assert (score(3, 10) - score(3, 11)).abs() > 1e-3  # a different offset gives a different score


def test_rotation_preserves_norms():
    x = torch.randn(2, 3, 17, 64)
    cos, sin = rope_cos_sin(torch.arange(17).expand(2, 17), 64)
    assert_close(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1), atol=1e-5)


def test_interleaved_layout_is_the_same_rotation_up_to_a_permutation():
    d = 16
    x = torch.randn(2, 2, 9, d)
    pos = torch.randint(0, 500, (2, 9))
    # interleaved pair i = dims (2i, 2i+1)  <->  half layout pair i = dims (i, i + d/2)
    to_half = torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])
    cos, sin = rope_cos_sin(pos, d)
    assert_close(apply_rope(x[..., to_half], cos, sin), apply_rope_interleaved(x, pos)[..., to_half], atol=1e-5)


def test_low_pairs_rotate_fast_high_pairs_slow():
    theta = inverse_frequencies(64, 10000.0)
    assert theta[0] == 1.0 and (theta.diff() < 0).all() and theta[-1] < 1.5e-4
