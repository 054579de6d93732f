"""The padding-free fast path computes the same loss and gradients as the padded plain path."""
from __future__ import annotations

import pytest
import torch
import transformers

from utils.collators import DataCollator, PaddingFreeCollator


def _model(config_name: str):
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=128, attn_implementation="sdpa",
        pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config.use_cache = False
    return getattr(transformers, config_name.replace("Config", "ForCausalLM"))(config).float()


def _features(lengths):
    feats = []
    for n in lengths:
        ids = torch.randint(3, 128, (n,)).tolist()
        labels = [-100] * (n // 3) + ids[n // 3:]  # a prompt, then a supervised answer
        feats.append({"input_ids": ids, "labels": labels})
    return feats


def _loss_and_grads(model, batch):
    model.zero_grad()
    labels = batch["labels"]
    n = int((labels[..., 1:] != -100).sum())
    out = model(**{k: v for k, v in batch.items()}, num_items_in_batch=torch.tensor(n))
    out.loss.backward()
    return out.loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("config_name", ["Qwen2Config", "LlamaConfig", "Phi3Config"])
def test_padding_free_matches_padded_loss_and_gradients(config_name):
    model = _model(config_name)
    feats = _features([7, 19, 12, 30])  # fresh random tokens every run
    padded_loss, padded_grads = _loss_and_grads(model, DataCollator(pad_token_id=0)(feats))
    packed_loss, packed_grads = _loss_and_grads(model, PaddingFreeCollator()(feats))
    torch.testing.assert_close(packed_loss, padded_loss, atol=1e-5, rtol=1e-5)
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-5, rtol=1e-4)


def test_padding_free_keeps_samples_apart():
    """Changing sample A's tokens must not change sample B's logits (no attention across samples)."""
    model = _model("Qwen2Config").eval()
    a, b = _features([10, 9])
    batch = PaddingFreeCollator()([a, b])
    a2 = {"input_ids": torch.randint(3, 128, (10,)).tolist(), "labels": a["labels"]}
    batch2 = PaddingFreeCollator()([a2, b])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        logits2 = model(input_ids=batch2["input_ids"], position_ids=batch2["position_ids"]).logits
    torch.testing.assert_close(logits[0, 10:], logits2[0, 10:], atol=1e-6, rtol=0)
    assert not torch.allclose(logits[0, :10], logits2[0, :10])


@pytest.mark.parametrize("bucket", [0, 8])
def test_pieces_hold_whole_samples_in_order_within_max_tokens(bucket):
    feats = _features([9, 14, 5, 30, 3, 11])  # 72 tokens; the 30-token sample is longer than max_tokens
    batch = PaddingFreeCollator(varlen=True, bucket=bucket, max_tokens=20)(feats)
    whole = PaddingFreeCollator(varlen=True)(feats)
    for key in ("input_ids", "labels", "position_ids"):  # the whole row is kept, unpadded, for counting and eval
        assert torch.equal(batch[key], whole[key])
    lengths, ids, labels = [], [], []
    for piece in batch["pieces"]:
        sizes = piece["cu_seq_lens_q"].diff().tolist()
        if bucket:  # the filler sample (unsupervised), then empty samples up to the whole row's boundary count
            assert len(sizes) == len(feats) + 1 and sizes[-1] == 0
            sizes = [n for n in sizes if n][:-1]
        assert piece["input_ids"].shape[1] % (bucket or 1) == 0
        lengths.append(sizes)
        ids.append(piece["input_ids"][0, :sum(sizes)])
        labels.append(piece["labels"][0, :sum(sizes)])
        assert (piece["labels"][0, sum(sizes):] == -100).all()
    assert lengths == [[9], [14, 5], [30], [3, 11]]
    assert torch.equal(torch.cat(ids), whole["input_ids"][0]) and torch.equal(torch.cat(labels), whole["labels"][0])


def test_a_micro_batch_within_max_tokens_is_not_split():
    feats = _features([9, 5])
    assert "pieces" not in PaddingFreeCollator(max_tokens=14)(feats)
