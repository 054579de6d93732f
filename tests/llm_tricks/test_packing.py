"""The leak probe passes for correct packing and fails for naive concatenation, on transformers' Qwen2 and by hand."""

import random

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from llm_tricks.packing.packing import TinyCausalLM, additive_mask, block_causal_mask, causal_mask, leak_probe, pack

VOCAB = 256


def _docs(n=3):
    return [torch.randint(0, VOCAB, (random.randint(3, 12),)) for _ in range(n)]


@pytest.fixture(scope="module")
def qwen2():
    """The issue's tiny random Qwen2: hidden 64, 2 layers, vocab 256."""
    config = Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
    )
    return Qwen2ForCausalLM(config).eval()


def _qwen2_run(model, strategy):
    def run(docs):
        p = pack(docs)
        if strategy == "4d_mask":  # explicit block-diagonal causal mask (additive float) + restarted position ids
            mask = additive_mask(block_causal_mask(p["doc_ids"]))
            kwargs = {"attention_mask": mask, "position_ids": p["position_ids"]}
        elif strategy == "4d_bool_mask":
            kwargs = {"attention_mask": block_causal_mask(p["doc_ids"]), "position_ids": p["position_ids"]}
        elif strategy == "position_ids":  # transformers infers the documents from the restarts
            kwargs = {"position_ids": p["position_ids"], "use_cache": False}
        elif strategy == "position_ids_with_cache":  # same, but use_cache left at its default (True)
            kwargs = {"position_ids": p["position_ids"]}
        else:  # naive concatenation: one causal row, positions 0 .. L-1
            kwargs = {}
        return model(input_ids=p["input_ids"], **kwargs).logits[0]

    return run


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("strategy", ["4d_mask", "position_ids"])
def test_correct_packing_does_not_leak_on_qwen2(qwen2, attn, strategy):
    qwen2.config._attn_implementation = attn
    docs = _docs()
    run = _qwen2_run(qwen2, strategy)
    assert leak_probe(run, docs, VOCAB, changed=0, watched=1) == 0.0
    assert leak_probe(run, docs, VOCAB, changed=1, watched=2) == 0.0
    # and each document's logits are those of the document run on its own
    with torch.no_grad():
        alone = qwen2(input_ids=docs[2][None]).logits[0]
    assert (run(docs)[-len(docs[2]):] - alone).abs().max() < 1e-5


@pytest.mark.parametrize(
    "strategy,attn",
    [("naive", "sdpa"), ("naive", "eager"), ("position_ids_with_cache", "sdpa"), ("4d_bool_mask", "eager")],
)
def test_leaky_packing_on_qwen2(qwen2, strategy, attn):
    """Naive concatenation leaks. So do two near misses (transformers 5.23): position_ids alone while a cache is
    built (use_cache defaults to True), and a *bool* 4-D mask on the eager kernel, which adds it to the scores."""
    qwen2.config._attn_implementation = attn
    assert leak_probe(_qwen2_run(qwen2, strategy), _docs(), VOCAB) > 1e-3


def test_bool_4d_mask_is_fine_on_sdpa(qwen2):
    qwen2.config._attn_implementation = "sdpa"
    assert leak_probe(_qwen2_run(qwen2, "4d_bool_mask"), _docs(), VOCAB) == 0.0


def test_with_a_correct_mask_rope_does_not_need_the_restart(qwen2):
    """RoPE scores depend on position offsets only, so shifting a whole document changes nothing (up to rounding)."""
    qwen2.config._attn_implementation = "sdpa"
    docs = _docs(2)
    p = pack(docs)
    global_positions = torch.arange(p["input_ids"].shape[1])[None]
    with torch.no_grad():
        mask = additive_mask(block_causal_mask(p["doc_ids"]))
        out = qwen2(input_ids=p["input_ids"], attention_mask=mask, position_ids=global_positions).logits
        out = out[0, len(docs[0]):]
        alone = qwen2(input_ids=docs[1][None]).logits[0]
    assert (out - alone).abs().max() < 1e-5


@pytest.mark.parametrize("position", ["rope", "absolute"])
def test_hand_written_model_block_mask_vs_causal_mask(position):
    model = TinyCausalLM(VOCAB, position=position).eval()
    docs = _docs()

    def run_with(mask_fn):
        return lambda ds: model(**{k: v for k, v in pack(ds).items() if k != "doc_ids"}, mask=mask_fn(pack(ds)))[0]

    assert leak_probe(run_with(lambda p: block_causal_mask(p["doc_ids"])), docs, VOCAB) == 0.0
    assert leak_probe(run_with(lambda p: causal_mask(p["input_ids"].shape[1])), docs, VOCAB) > 1e-3


def test_absolute_positions_need_the_restart():
    """With learned absolute positions, document B at offset len(A) is a different input than B alone."""
    model = TinyCausalLM(VOCAB, position="absolute").eval()
    docs = _docs(2)
    p = pack(docs)
    mask = block_causal_mask(p["doc_ids"])
    alone_ids = docs[1][None]
    with torch.no_grad():
        alone = model(alone_ids, torch.arange(len(docs[1]))[None], causal_mask(len(docs[1])))[0]
        restarted = model(p["input_ids"], p["position_ids"], mask)[0, len(docs[0]):]
        global_pos = model(p["input_ids"], torch.arange(p["input_ids"].shape[1])[None], mask)[0, len(docs[0]):]
    assert (restarted - alone).abs().max() < 1e-5
    assert (global_pos - alone).abs().max() > 1e-3
