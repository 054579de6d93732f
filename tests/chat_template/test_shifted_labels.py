"""Pin the label convention: encode() gives labels aligned with input_ids (unshifted); the model shifts them.

If encode() ever shifted labels itself, every mask would be off by one (the model would learn to predict the token
after the one it should), and nothing else would notice: this file is the guard.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from chat_template import IGNORE_INDEX, encode


def test_transformers_causal_lm_shifts_labels_itself():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=32)
    model = Qwen2ForCausalLM(config).eval()
    t0, t1, t2 = 5, 17, 42
    input_ids = torch.tensor([[t0, t1, t2]])
    labels = torch.tensor([[IGNORE_INDEX, t1, t2]])  # as encode() writes them: label i is token i, or ignored
    with torch.no_grad():
        out = model(input_ids=input_ids, labels=labels)
    logits = out.logits[0].float()
    # position 0 (having seen t0) is trained to predict t1, position 1 to predict t2; position 2 predicts nothing
    expected = (F.cross_entropy(logits[0:1], torch.tensor([t1])) + F.cross_entropy(logits[1:2], torch.tensor([t2]))) / 2
    assert torch.allclose(out.loss, expected, atol=1e-6)
    # the off-by-one readings give other numbers, so the assertion above really pins the convention
    unshifted = F.cross_entropy(logits[1:3], torch.tensor([t1, t2]))
    assert not torch.allclose(out.loss, unshifted, atol=1e-4)


def test_encode_labels_are_aligned_with_input_ids(template_tokenizer, primary):
    tok = template_tokenizer("qwen")
    messages = [{"role": "user", "content": "Say yes."}, {"role": "assistant", "content": "Yes"}]
    enc = encode(messages, tok, "qwen", **primary["qwen"][2])
    ids, labels = enc["input_ids"], enc["labels"]
    assert len(ids) == len(labels)
    assert all(label == IGNORE_INDEX or label == tid for tid, label in zip(ids, labels))
    supervised = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    # exactly "Yes" + "<|im_end|>", and the token before them is the header's "\n": the model, having read
    # "<|im_start|>assistant\n", is trained to write "Yes"
    assert tok.convert_ids_to_tokens([ids[i] for i in supervised]) == ["Yes", "<|im_end|>"]
    assert tok.decode(ids[:supervised[0]]).endswith("<|im_start|>assistant\n")
    assert supervised == list(range(supervised[0], supervised[0] + 2))


def test_ignore_index_is_what_cross_entropy_skips():
    assert IGNORE_INDEX == -100 == torch.nn.CrossEntropyLoss().ignore_index
