"""Sequence packing without cross-document leaks, and a probe that catches the leak.

Packing concatenates several short documents into one row so no compute is wasted on padding.
Done naively (one causal mask over the whole row), a token of document B attends to every token of
document A before it: B's loss now depends on an unrelated text, and the model learns to do so.
Correct packing needs, for every pair of tokens, "same document AND not in the future": a
block-diagonal causal mask. Position ids restart at 0 in each document.

The probe states the requirement as a test: change document A's tokens, rerun, and B's logits must
not move at all. See tests/llm_tricks/test_packing.py for the measured behaviour of a transformers
Qwen2 model and of the hand-written model below.
"""

import torch
import torch.nn.functional as F
from torch import nn

from llm_tricks.rope.rope import apply_rope, rope_cos_sin


def pack(docs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """One row holding all documents: input_ids, per-document position_ids and doc_ids, each (1, total)."""
    return {
        "input_ids": torch.cat(docs)[None],
        "position_ids": torch.cat([torch.arange(len(d)) for d in docs])[None],
        "doc_ids": torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])[None],
    }


def block_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """(batch, 1, L, L) bool, True where query i may attend key j: same document and j <= i."""
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
    length = doc_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=doc_ids.device).tril()
    return (same_doc & causal)[:, None]


def additive_mask(mask: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Bool mask -> float mask to *add* to the scores: 0 where allowed, the most negative float elsewhere.

    transformers passes a custom 4-D mask to the attention kernel as-is. SDPA accepts bool, but the
    eager kernel does `scores + mask`, so a bool mask there adds 1 or 0 and masks nothing (measured in
    the test, transformers 5.23). The float form works for both. finfo.min rather than -inf keeps a
    fully masked row (a padding query) finite instead of NaN.
    """
    return torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)


def causal_mask(length: int) -> torch.Tensor:
    """The naive mask, (1, 1, L, L): every earlier token of the row, whatever its document."""
    return torch.ones(length, length, dtype=torch.bool).tril()[None, None]


def leak_probe(run, docs: list[torch.Tensor], vocab_size: int, changed: int = 0, watched: int = 1) -> float:
    """Max |change| of document `watched`'s logits when document `changed` gets new random tokens.

    `run(docs)` must return the (total_length, vocab) logits of the packed row. 0.0 means no leak.
    """
    starts = torch.tensor([0] + [len(d) for d in docs]).cumsum(0)
    span = slice(starts[watched].item(), starts[watched + 1].item())
    other = list(docs)
    other[changed] = torch.randint(0, vocab_size, docs[changed].shape)
    with torch.no_grad():
        return (run(docs)[span] - run(other)[span]).abs().max().item()


class TinyCausalLM(nn.Module):
    """A hand-written one-layer transformer LM (attention + MLP), about 40 lines, to see the mask at work.

    position="rope" rotates q and k (llm_tricks/rope); position="absolute" adds a learned position
    embedding to the input, as GPT-2 does. `mask` is a bool (batch, 1, L, L) tensor, True = may attend.
    """

    def __init__(self, vocab_size=256, hidden=64, heads=4, max_positions=512, position="rope"):
        super().__init__()
        self.heads, self.position = heads, position
        self.embed = nn.Embedding(vocab_size, hidden)
        self.pos_embed = nn.Embedding(max_positions, hidden) if position == "absolute" else None
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden))
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.lm_head = nn.Linear(hidden, vocab_size)

    def forward(self, input_ids, position_ids, mask):
        h = self.embed(input_ids)
        if self.pos_embed is not None:
            h = h + self.pos_embed(position_ids)
        b, length, d = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(b, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.position == "rope":
            cos, sin = rope_cos_sin(position_ids, d // self.heads)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        scores = q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5  # (b, heads, L, L)
        scores = scores.masked_fill(~mask, float("-inf"))  # a masked key gets exactly zero weight
        attn = F.softmax(scores, dim=-1) @ v
        h = h + self.out(attn.transpose(1, 2).reshape(b, length, d))
        h = h + self.mlp(self.norm2(h))
        return self.lm_head(h)
