"""factored_dora_norm: DoRA's row norm from W Aᵀ and A Aᵀ gives peft's norm, loss, gradients and merge."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from peft.tuners.lora.dora import DoraLinearLayer

from tests.conftest import loss_and_grads, packed_batch, tiny_qwen2
from utils.dora import FactoredNormDora, factored_row_norm
from utils.model import apply_peft


def _args(**kw):
    base = dict(train_mode="lora", lora_rank=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules=None,
                use_dora=True, factored_dora_norm=False, use_rslora=False, init_lora_weights=False,
                train_new_tokens=False)
    return SimpleNamespace(**{**base, **kw})  # init_lora_weights False: B random, so s·BA is not zero


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_factored_row_norm_equals_the_norm_of_the_adapted_weight(dtype, tol):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(48, 40, generator=g).to(dtype)
    a, b = torch.randn(8, 40, generator=g), torch.randn(48, 8, generator=g)
    expected = torch.linalg.norm(weight.float() + 0.7 * b @ a, dim=1)
    sq_norm = (weight.float() ** 2).sum(dim=1)
    torch.testing.assert_close(factored_row_norm(weight, sq_norm, a, b, 0.7), expected, rtol=tol, atol=0)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_factored_dora_norm_matches_peft_loss_and_gradients(dropout):
    plain = apply_peft(tiny_qwen2(), _args(lora_dropout=dropout))
    fast = apply_peft(tiny_qwen2(), _args(lora_dropout=dropout, factored_dora_norm=True))
    switched = [m for m in fast.modules() if isinstance(m, FactoredNormDora)]
    assert len(switched) == 2 * 7  # every adapted linear of both layers
    fast.load_state_dict(plain.state_dict())  # the same adapters (init draws differ only by module order)
    for m in (plain, fast):
        m.train()
    for step in range(2):
        ref_loss, ref_grads = loss_and_grads(plain, packed_batch(step), seed=step)
        loss, grads = loss_and_grads(fast, packed_batch(step), seed=step)
        torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-5)
        assert grads.keys() == ref_grads.keys() and any("magnitude" in k for k in grads)
        for name, grad in ref_grads.items():
            torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_factored_dora_norm_follows_adapter_updates_and_merges_like_peft():
    """The norm is recomputed from the current A and B (no stale cache after an optimizer step), and merging
    (peft's own code) gives the model the unmerged one computes."""
    fast = apply_peft(tiny_qwen2(), _args(factored_dora_norm=True))
    plain = copy.deepcopy(fast)
    for m in plain.modules():
        if isinstance(m, FactoredNormDora):
            m.__class__ = DoraLinearLayer  # back to peft's forward
    with torch.no_grad():
        for model in (fast, plain):
            torch.manual_seed(1)
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.add_(torch.randn_like(p))  # what an optimizer step does to B
    batch = packed_batch()
    fast.eval()
    plain.eval()
    with torch.no_grad():
        logits = fast(**batch).logits
        torch.testing.assert_close(logits, plain(**batch).logits, atol=1e-5, rtol=1e-5)
        merged = fast.merge_and_unload()(**batch).logits
    torch.testing.assert_close(merged, logits, atol=1e-4, rtol=1e-4)


def test_factored_dora_norm_needs_use_dora():
    from train_args.base import TrainArgs
    with pytest.raises(ValueError, match="factored_dora_norm: is a DoRA fast path"):
        TrainArgs(output_dir="unused", factored_dora_norm=True, report_to="none")


def test_factored_dora_norm_is_computed_once_per_forward_not_again_in_the_recompute(monkeypatch):
    """Under activation checkpointing every layer runs twice; the norms are refreshed once, before the decoder
    stack, and the recompute reads them: the same loss and gradients as peft's path, half the norm computations."""
    import utils.dora
    plain = apply_peft(tiny_qwen2(), _args())
    fast = apply_peft(tiny_qwen2(), _args(factored_dora_norm=True))
    fast.load_state_dict(plain.state_dict())
    for m in (plain, fast):
        m.train()
        m.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    calls = []
    compute = utils.dora.factored_row_norm
    monkeypatch.setattr(utils.dora, "factored_row_norm", lambda *a: calls.append(1) or compute(*a))
    ref_loss, ref_grads = loss_and_grads(plain, packed_batch())
    loss, grads = loss_and_grads(fast, packed_batch())
    assert len(calls) == 2 * 7  # one per adapted linear of the two layers, for forward and recompute together
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-5)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_dora_outside_the_decoder_stack_computes_its_own_norm():
    """A DoRA linear that no decoder-stack hook refreshes (here: the output head) computes its norm per call."""
    model = apply_peft(tiny_qwen2(), _args(factored_dora_norm=True,
                                           lora_target_modules=["q_proj", "lm_head"]))
    norms = {n: m.row_norm for n, m in model.named_modules() if isinstance(m, FactoredNormDora)}
    head = [n for n in norms if "lm_head" in n]
    assert head and all(norms[n] is None for n in head)
    assert all(norms[n] is not None for n in norms if "q_proj" in n)
    plain = copy.deepcopy(model)
    for m in plain.modules():
        if isinstance(m, FactoredNormDora):
            m.__class__ = DoraLinearLayer
    with torch.no_grad():
        torch.testing.assert_close(model(**packed_batch()).logits, plain(**packed_batch()).logits, atol=1e-5, rtol=1e-5)


def test_a_deep_copy_refreshes_its_own_norms():
    """trl's reference model is a deep copy: its hook must refresh the copy's norms, not the original's."""
    fast = apply_peft(tiny_qwen2(), _args(factored_dora_norm=True))
    copied = copy.deepcopy(fast)
    with torch.no_grad():
        for name, p in copied.named_parameters():
            if "lora_B" in name:
                p.add_(1.0)  # the copy's adapters differ from the original's
        expected = copied(**packed_batch()).logits
        for m in copied.modules():
            if isinstance(m, FactoredNormDora):
                m.__class__ = DoraLinearLayer
        torch.testing.assert_close(expected, copied(**packed_batch()).logits, atol=1e-5, rtol=1e-5)


def test_compiled_norm_refresh_is_one_graph_for_every_layer():
    """Under compile_layers the refresh is compiled too: the layers' shapes are the same, so one graph serves them
    all (not one per layer), and it writes the norms the eager refresh writes."""
    import utils.dora
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list
    from utils.model import compile_layers
    torch._dynamo.reset()
    model = apply_peft(tiny_qwen2(), _args(factored_dora_norm=True))
    compile_layers(model, SimpleNamespace(compile_layers=True))
    with torch.no_grad():
        model(**packed_batch())
    assert len(_debug_get_cache_entry_list(utils.dora._row_norms_into.__code__)) == 1
    switched = [m for m in model.modules() if isinstance(m, FactoredNormDora)]
    for module in model.modules():
        for name, dora in getattr(module, "lora_magnitude_vector", {}).items():
            expected = factored_row_norm(module.get_base_layer().weight, dora.weight_sq_norm,
                                         module.lora_A[name].weight, module.lora_B[name].weight, module.scaling[name])
            torch.testing.assert_close(dora.row_norm, expected, atol=1e-5, rtol=1e-5)
    assert len(switched) == 2 * 7
