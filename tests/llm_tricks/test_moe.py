"""MoE block == MixtralSparseMoeBlock; aux loss == transformers' load_balancing_loss_func (Mixtral and Qwen2-MoE)."""

import pytest
import torch
from transformers import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func as mixtral_aux
from transformers.models.qwen2_moe.modeling_qwen2_moe import load_balancing_loss_func as qwen2_moe_aux
from tricks_testutils import assert_close

from llm_tricks.moe.moe import MoEBlock, load_balancing_loss

CASES = [(4, 1, 2, 7), (8, 2, 3, 5), (6, 3, 1, 16)]  # (experts, top_k, batch, seq)


@pytest.mark.parametrize("num_experts,top_k,batch,seq", CASES)
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("reference", [mixtral_aux, qwen2_moe_aux], ids=["mixtral", "qwen2_moe"])
def test_aux_loss_matches_transformers(num_experts, top_k, batch, seq, layers, reference):
    logits = tuple(torch.randn(batch * seq, num_experts) * 2 for _ in range(layers))
    assert_close(load_balancing_loss(logits, num_experts, top_k), reference(logits, num_experts, top_k))
    mask = (torch.rand(batch, seq) > 0.3).long()
    mask[:, 0] = 1  # at least one real token per row
    ours = load_balancing_loss(logits, num_experts, top_k, attention_mask=mask)
    assert_close(ours, reference(logits, num_experts, top_k, attention_mask=mask), what="with padding mask")


def test_aux_loss_is_top_k_when_balanced_and_larger_when_collapsed():
    E, k, n = 8, 2, 4096
    uniform = (torch.zeros(n, E) + 1e-3 * torch.randn(n, E),)  # near-uniform probabilities, random ties
    assert load_balancing_loss(uniform, E, k).item() == pytest.approx(k, rel=0.02)
    collapsed = torch.zeros(n, E)
    collapsed[:, :k] = 5.0  # every token prefers experts 0 and 1
    assert load_balancing_loss((collapsed,), E, k).item() > 3 * k


def test_aux_loss_gradient_lowers_the_probability_of_overloaded_experts():
    E, k = 4, 1
    logits = torch.zeros(256, E)
    logits[:, 0] = 2.0  # expert 0 gets every token
    logits.requires_grad_(True)
    load_balancing_loss((logits,), E, k).backward()
    assert (logits.grad[:, 0] > 0).all()  # gradient descent pushes expert 0's logit down


def _copy_into_mixtral(ours: MoEBlock, hidden, intermediate, num_experts, top_k) -> MixtralSparseMoeBlock:
    config = MixtralConfig(
        hidden_size=hidden, intermediate_size=intermediate, num_local_experts=num_experts, num_experts_per_tok=top_k
    )
    ref = MixtralSparseMoeBlock(config)
    with torch.no_grad():  # Mixtral packs the experts into 3-D tensors: gate_up_proj[e] = [gate; up]
        ref.gate.weight.copy_(ours.router.weight)
        for e, expert in enumerate(ours.experts):
            ref.experts.gate_up_proj[e].copy_(torch.cat([expert.gate.weight, expert.up.weight], dim=0))
            ref.experts.down_proj[e].copy_(expert.down.weight)
    return ref.eval()


@pytest.mark.parametrize("hidden,intermediate,num_experts,top_k", [(16, 24, 4, 2), (12, 40, 6, 1), (20, 8, 5, 3)])
def test_moe_block_matches_mixtral(hidden, intermediate, num_experts, top_k):
    ours = MoEBlock(hidden, intermediate, num_experts, top_k)
    ref = _copy_into_mixtral(ours, hidden, intermediate, num_experts, top_k)
    x = torch.randn(3, 9, hidden)
    y, logits = ours(x)
    with torch.no_grad():
        y_ref = ref(x)
        logits_ref, _, _ = ref.gate(x)
    assert_close(y, y_ref, what="block output")
    assert_close(logits, logits_ref, what="router logits")


@pytest.mark.parametrize("output_router_logits", [False, True])
def test_mixtral_adds_the_aux_loss_only_when_asked(output_router_logits):
    """The README's pitfall: MixtralForCausalLM adds coef * aux to the loss only with output_router_logits=True."""
    from transformers import MixtralForCausalLM

    config = MixtralConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2)
    model = MixtralForCausalLM(config).eval()
    ids = torch.randint(0, 64, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask, labels=ids).loss
        out = model(input_ids=ids, attention_mask=mask, labels=ids, output_router_logits=output_router_logits)
    if not output_router_logits:
        assert out.aux_loss is None and torch.equal(out.loss, plain)
        return
    ours = load_balancing_loss(out.router_logits, 4, 2, attention_mask=mask)
    assert_close(out.aux_loss, ours, what="aux loss from real router logits")
    assert_close(out.loss, plain + config.router_aux_loss_coef * ours, what="total loss")
