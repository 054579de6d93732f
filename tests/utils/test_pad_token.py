"""The pad token a run picks (and saves as pad_token_id) is the same on every load of the same tokenizer."""
from __future__ import annotations

import chat_template
from tests.conftest import shared_path
from utils.tokenizer import load_tokenizer, set_pad_token


def test_pad_token_is_the_lowest_id_pad_like_token_on_every_load():
    # Qwen's own pad "<|endoftext|>" is a stop token of the qwen template, so one of its four "<|..._pad|>"
    # tokens is picked; get_vocab() lists them in a different order on each load
    folder = str(shared_path("tokenizers", "qwen2.5"))
    picks = []
    for _ in range(3):
        tokenizer = load_tokenizer(folder)
        set_pad_token(tokenizer, "qwen")
        picks.append((tokenizer.pad_token, tokenizer.pad_token_id))
    vocab = tokenizer.get_vocab()
    pad_like = sorted(vocab[t] for t in vocab if "pad" in t.lower() and t.startswith("<"))
    assert len(pad_like) == 4
    assert picks == [("<|vision_pad|>", pad_like[0])] * 3
    assert pad_like[0] not in chat_template.stop_token_ids(tokenizer, "qwen")
