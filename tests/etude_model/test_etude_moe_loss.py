"""Etude's MoE load-balancing loss (router_aux_loss_coef * aux_loss) reaches the gradient on every training path:
SFT's plain path and chunked_loss, pretraining's plain loop and --fused_ce, all through utils/loss.py's one seam."""
from __future__ import annotations

import argparse

import pytest
import torch

from etude_model import EtudeForCausalLM
from etude_model.pretrain import make_loss_fn
from train_args.base import TrainArgs
from utils.loss import causal_lm_loss
from utils.trainer import DojoTrainer

COEF = 0.5  # large enough that a dropped load-balancing term is far outside the tolerances below


def tiny_moe(make_tiny_config) -> EtudeForCausalLM:
    torch.manual_seed(0)
    return EtudeForCausalLM(make_tiny_config("etude-tiny-moe", router_aux_loss_coef=COEF)).eval()


def sft_batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 320, (2, 24), generator=g)
    labels = ids.clone()
    labels[:, :8] = -100  # the prompt is not supervised
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0  # right padding
    labels[1, 20:] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def loss_and_grads(model, loss_fn):
    model.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(got, want):
    torch.testing.assert_close(got[0], want[0], atol=1e-6, rtol=1e-6)
    assert got[1].keys() == want[1].keys()
    for name, grad in want[1].items():
        torch.testing.assert_close(got[1][name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_the_plain_loss_holds_the_load_balancing_term(make_tiny_config):
    """The reference of the tests below: the model's own loss is the cross-entropy plus COEF * aux_loss, a term
    far larger than their tolerances (so a path that drops it fails their comparisons)."""
    model, batch = tiny_moe(make_tiny_config), sft_batch()
    out = model(**batch)
    model.config.router_aux_loss_coef = 0.0
    plain = model(**batch).loss
    assert out.aux_loss > 0.5
    torch.testing.assert_close(out.loss, plain + COEF * out.aux_loss)


@pytest.mark.parametrize("chunked_loss", [False, True])
def test_sft_loss_keeps_etudes_load_balancing_loss(chunked_loss, make_tiny_config, tmp_path):
    """DojoTrainer.compute_loss, plain and chunked_loss: the model's own loss and gradients (router included)."""
    model, batch = tiny_moe(make_tiny_config), sft_batch()
    num_items = (batch["labels"][:, 1:] != -100).sum()
    args = TrainArgs(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", chunked_loss=chunked_loss)
    trainer = DojoTrainer(model=model, args=args)
    want = loss_and_grads(model, lambda: model(**batch, num_items_in_batch=num_items).loss)
    got = loss_and_grads(model, lambda: trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items))
    assert_same(got, want)
    assert any("router" in name for name in got[1])


@pytest.mark.parametrize("backend", ["model", "chunked", "liger"])
def test_every_loss_backend_adds_the_load_balancing_loss(backend, make_tiny_config):
    """causal_lm_loss on each backend: labels or already shifted labels, mean or a given token count. The liger
    backend is its composition (the model's logits, the cross-entropy, the auxiliary term): off CUDA it runs torch's
    cross-entropy in the kernel's place."""
    model, batch = tiny_moe(make_tiny_config), sft_batch()
    labels = batch.pop("labels")
    want = loss_and_grads(model, lambda: model(**batch, labels=labels).loss)
    assert_same(loss_and_grads(model, lambda: causal_lm_loss(model, batch, labels, backend=backend)), want)
    shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
    want = loss_and_grads(model, lambda: model(**batch, shift_labels=shifted, num_items_in_batch=50).loss)
    got = loss_and_grads(model, lambda: causal_lm_loss(model, batch, num_items=torch.tensor(50), backend=backend,
                                                       shift_labels=shifted))
    assert_same(got, want)


@pytest.mark.parametrize("fused_ce", [False, True])
def test_pretrain_loss_keeps_etudes_load_balancing_loss(fused_ce, make_tiny_config):
    """etude_model.pretrain's step loss, plain and --fused_ce (on CPU: the liger backend with torch's
    cross-entropy): the model's own loss on the window, load-balancing term included."""
    model = tiny_moe(make_tiny_config).train()
    x = torch.randint(4, 320, (2, 16), generator=torch.Generator().manual_seed(2))
    y = torch.randint(4, 320, (2, 16), generator=torch.Generator().manual_seed(3))
    loss_fn = make_loss_fn(model, argparse.Namespace(fused_ce=fused_ce), torch.device("cpu"))
    want = loss_and_grads(model, lambda: model(input_ids=x, shift_labels=y, use_cache=False).loss)
    assert_same(loss_and_grads(model, lambda: loss_fn(x, y)), want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device)")
def test_fused_ce_kernel_keeps_etudes_load_balancing_loss_on_cuda(make_tiny_config):
    """--fused_ce on CUDA: liger-kernel's cross-entropy on the logits plus the load-balancing term, the model's own
    loss and gradients within the kernel's fp32 rounding."""
    pytest.importorskip("liger_kernel")
    model = tiny_moe(make_tiny_config).cuda().train()
    x = torch.randint(4, 320, (2, 16), generator=torch.Generator().manual_seed(2)).cuda()
    y = torch.randint(4, 320, (2, 16), generator=torch.Generator().manual_seed(3)).cuda()
    loss_fn = make_loss_fn(model, argparse.Namespace(fused_ce=True), torch.device("cuda"))
    want = loss_and_grads(model, lambda: model(input_ids=x, shift_labels=y, use_cache=False).loss)
    got = loss_and_grads(model, lambda: loss_fn(x, y))
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    for name, grad in want[1].items():
        torch.testing.assert_close(got[1][name], grad, atol=1e-5, rtol=1e-3, msg=name)
