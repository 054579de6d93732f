"""attn_implementation varlen: the same loss and gradients as transformers' sdpa path on padding-free rows."""
from __future__ import annotations

import pytest
import torch
import transformers

from utils.attention import NAME, masked_varlen, sample_ids
from utils.collators import PaddingFreeCollator


def _model(attn: str, config_name: str = "Qwen2Config"):
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=128, pad_token_id=0, attn_implementation=attn)
    config.use_cache = False
    return getattr(transformers, config_name.replace("Config", "ForCausalLM"))(config).float()


def _features(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, 128, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * (n // 3) + ids[n // 3:]})
    return out


def _loss_and_grads(model, batch):
    model.zero_grad()
    n = (batch["labels"][..., 1:] != -100).sum()
    loss = model(**batch, num_items_in_batch=n).loss
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


def test_sample_ids_from_cumulative_lengths():
    assert sample_ids(torch.tensor([0, 2, 5, 6], dtype=torch.int32), 6).tolist() == [0, 0, 1, 1, 1, 2]


def test_masked_varlen_attends_within_each_sample_only():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 9, 4, 8).unbind(0)
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    out = masked_varlen(q, k, v, cu, scale=None)
    for a, b in ((0, 4), (4, 9)):  # each sample alone, causal
        alone = torch.nn.functional.scaled_dot_product_attention(
            q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1), is_causal=True)
        torch.testing.assert_close(out[a:b], alone.transpose(0, 1), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("config_name", ["Qwen2Config", "LlamaConfig"])
@pytest.mark.parametrize("bucket", [0, 16])
def test_varlen_matches_sdpa_loss_and_gradients(config_name, bucket):
    feats = _features([7, 19, 12, 30])
    ref_loss, ref_grads = _loss_and_grads(_model("sdpa", config_name), PaddingFreeCollator()(feats))
    batch = PaddingFreeCollator(varlen=True, bucket=bucket)(feats)
    loss, grads = _loss_and_grads(_model(NAME, config_name), batch)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-4)


def test_varlen_without_padding_free_batches_is_refused():
    model = _model(NAME)
    with pytest.raises(ValueError, match="padding_free"):
        model(input_ids=torch.tensor([[5, 6, 7]]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash varlen kernel needs CUDA")
def test_flash_varlen_matches_masked_reference_on_gpu():
    torch.manual_seed(0)
    q = torch.randn(300, 14, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(300, 2, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(300, 2, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    cu = torch.tensor([0, 100, 180, 300, 300, 300], dtype=torch.int32, device="cuda")  # empty samples too
    from utils.attention import varlen_attention
    out, _ = varlen_attention(None, q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                              None, scaling=0.125, cu_seq_lens_q=cu, max_length_q=300)
    ref = masked_varlen(q.float(), k.float(), v.float(), cu, 0.125)
    torch.testing.assert_close(out[0].float(), ref, atol=2e-2, rtol=2e-2)
    out.float().square().sum().backward()
    grad_q = q.grad.clone()
    q.grad = None
    masked_varlen(q, k, v, cu, 0.125).float().square().sum().backward()
    torch.testing.assert_close(grad_q.float(), q.grad.float(), atol=5e-2, rtol=5e-2)
