"""chunked_loss: the chunked linear + cross-entropy gives transformers' loss and gradients."""
from __future__ import annotations

import pytest
import torch
from transformers.loss.loss_utils import ForCausalLMLoss

from utils.loss import chunk_tokens, chunked_causal_lm_loss


def test_chunks_fit_the_memory_budget_and_whole_tiles():
    assert chunk_tokens(151936, 2) == 384  # 384 x 152k x (2 + 2) bytes <= 256 MiB
    assert chunk_tokens(151936, 2) % 64 == 0
    assert chunk_tokens(10**9, 4) == 64  # never below one tile


@pytest.mark.parametrize("head_trained", [False, True])
@pytest.mark.parametrize("num_items", [None, 37])
def test_chunked_loss_matches_full_logits(head_trained, num_items, monkeypatch):
    monkeypatch.setattr("utils.loss.CHUNK_BYTES", 64 * 2 * 4 * 50)  # 64-token chunks: 3 chunks, the last partial
    torch.manual_seed(0)
    hidden = torch.randn(2, 80, 16, dtype=torch.float64, requires_grad=True)
    head = torch.nn.Linear(16, 50, bias=False).double().requires_grad_(head_trained)
    labels = torch.randint(0, 50, (2, 80))
    labels[:, :20] = -100
    loss = chunked_causal_lm_loss(hidden, head, labels, None if num_items is None else torch.tensor(num_items))
    (3 * loss).backward()
    grads = hidden.grad.clone(), head.weight.grad.clone() if head_trained else None
    hidden.grad, head.weight.grad = None, None
    ref = ForCausalLMLoss(head(hidden), labels, 50, num_items_in_batch=(
        None if num_items is None else torch.tensor(num_items)))
    (3 * ref).backward()
    torch.testing.assert_close(loss, ref.float(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grads[0], hidden.grad, atol=1e-7, rtol=1e-4)  # fp32 softmax, as the plain loss
    if head_trained:
        torch.testing.assert_close(grads[1], head.weight.grad, atol=1e-7, rtol=1e-4)  # fp32 softmax, as the plain loss


def test_fp32_head_under_bf16_autocast_runs_in_bf16_like_the_plain_path():
    """QLoRA keeps the head in fp32; under autocast both paths multiply in bf16 and return an fp32-typed grad."""
    torch.manual_seed(0)
    hidden = torch.randn(1, 70, 16, requires_grad=True)
    head = torch.nn.Linear(16, 50, bias=False)
    labels = torch.randint(0, 50, (1, 70))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = chunked_causal_lm_loss(hidden, head, labels)
        ref = ForCausalLMLoss(head(hidden), labels, 50)
    loss.backward()
    assert hidden.grad.dtype == torch.float32
    torch.testing.assert_close(loss, ref, atol=2e-2, rtol=1e-2)


def test_chunked_loss_without_grad_is_the_same_loss_and_only_the_logits_matmul():
    """Evaluation runs under no_grad: the loss alone. The only matmul is the logits' (no d loss / d hidden or head
    gradient computed for nothing), counted by torch's FLOP counter against the differentiable call's three."""
    from torch.utils.flop_counter import FlopCounterMode
    torch.manual_seed(0)
    hidden = torch.randn(1, 90, 16, requires_grad=True)
    head = torch.nn.Linear(16, 50, bias=False)
    labels = torch.randint(0, 50, (1, 90))
    logits_flops = 2 * 90 * 16 * 50
    for grad, matmuls in ((False, 1), (True, 3)):  # with grad: logits, d loss / d hidden, the head's gradient
        with torch.set_grad_enabled(grad), FlopCounterMode(display=False) as flops:
            loss = chunked_causal_lm_loss(hidden, head, labels)
        assert flops.get_total_flops() == matmuls * logits_flops
        assert (loss.grad_fn is None) == (not grad)
    torch.testing.assert_close(loss, ForCausalLMLoss(head(hidden), labels, 50), atol=1e-6, rtol=1e-6)


def test_chunked_loss_soft_caps_the_logits_like_gemma(monkeypatch):
    """Gemma 2/3 train on c * tanh(z / c) of the head's logits z: the same loss and gradients, capped."""
    monkeypatch.setattr("utils.loss.CHUNK_BYTES", 64 * 2 * 4 * 50)  # several chunks
    torch.manual_seed(0)
    hidden = torch.randn(1, 150, 16, dtype=torch.float64, requires_grad=True)
    head = torch.nn.Linear(16, 50, bias=False).double()
    labels = torch.randint(0, 50, (1, 150))
    cap = 1.5  # small enough that capping changes the loss
    loss = chunked_causal_lm_loss(hidden, head, labels, softcap=cap)
    loss.backward()
    grads = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None
    ref = ForCausalLMLoss(cap * torch.tanh(head(hidden) / cap), labels, 50)
    ref.backward()
    torch.testing.assert_close(loss, ref.float(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grads[0], hidden.grad, atol=1e-7, rtol=1e-4)
    torch.testing.assert_close(grads[1], head.weight.grad, atol=1e-7, rtol=1e-4)
    assert abs(loss.item() - chunked_causal_lm_loss(hidden, head, labels).item()) > 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device)")
@pytest.mark.parametrize("softcap", [None, 30.0])
def test_compiled_chunk_on_gpu_matches_the_reference_in_bf16(softcap, monkeypatch):
    """On CUDA the chunk's softmax math is compiled (chunk_fn): the loss and gradients of the model's own
    (soft-capped) logits in fp32, within bf16 rounding, across several chunks."""
    monkeypatch.setattr("utils.loss.CHUNK_BYTES", 256 * 2 * 2 * 3000)  # chunks of 256 tokens: 4, the last partial
    torch.manual_seed(0)
    hidden = torch.randn(1, 1000, 64, device="cuda", requires_grad=True)
    head = torch.nn.Linear(64, 3000, bias=False, device="cuda")
    head.weight.data.mul_(20)  # logits of tens, where a cap of 30 bends them
    labels = torch.randint(0, 3000, (1, 1000), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = chunked_causal_lm_loss(hidden, head, labels, softcap=softcap)
    loss.backward()
    grads = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None
    logits = head(hidden).float()
    ref = ForCausalLMLoss(softcap * torch.tanh(logits / softcap) if softcap else logits, labels, 3000)
    ref.backward()
    torch.testing.assert_close(loss, ref, atol=2e-2, rtol=2e-2)
    for got, want in zip(grads, (hidden.grad, head.weight.grad)):
        assert torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.99


def test_transformers_moe_router_loss_is_kept_by_the_liger_backend_and_refused_by_chunked():
    """A transformers MoE model with output_router_logits adds coef * its router loss in the causal-LM forward: the
    liger backend (here torch's cross-entropy in the kernel's place) reads it from that output, the model's own loss;
    the decoder's output that chunked_loss reads has none, so chunked_loss refuses the model instead of dropping it."""
    import transformers
    from utils.loss import causal_lm_loss
    torch.manual_seed(0)
    config = transformers.Qwen2MoeConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
        shared_expert_intermediate_size=32, num_experts=4, num_experts_per_tok=2, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, output_router_logits=True, router_aux_loss_coef=0.5)
    model = transformers.Qwen2MoeForCausalLM(config)
    ids = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(1))
    own = model(input_ids=ids, labels=ids)
    assert 0.5 * own.aux_loss > 0.1  # the router term is large: dropping it would fail the comparison
    torch.testing.assert_close(causal_lm_loss(model, {"input_ids": ids}, ids, backend="liger"), own.loss)
    with pytest.raises(ValueError, match="chunked_loss: cannot add the router load-balancing loss"):
        causal_lm_loss(model, {"input_ids": ids}, ids, backend="chunked")
