"""loraplus_param_groups == the groups of peft.optimizers.create_loraplus_optimizer (names, lrs, weight decay)."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.optimizers import create_loraplus_optimizer as peft_create_loraplus_optimizer
from torch import nn

from llm_tricks.lora.lora import add_adapters
from llm_tricks.lora_plus.lora_plus import create_loraplus_optimizer, loraplus_param_groups


class Tiny(nn.Module):
    """Every branch of the grouping: an embedding, linears with biases, a LayerNorm."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.fc1 = nn.Linear(16, 24)
        self.norm = nn.LayerNorm(24)
        self.fc2 = nn.Linear(24, 10)

    def forward(self, ids):
        return self.fc2(self.norm(self.fc1(self.emb(ids))))


def _peft_model(use_dora):
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["emb", "fc1", "fc2"], use_dora=use_dora, bias="all", modules_to_save=["norm"]
    )
    return get_peft_model(Tiny(), config)


@pytest.mark.parametrize("use_dora", [False, True])
@pytest.mark.parametrize("lr,ratio,wd,lr_emb", [(1e-3, 16.0, 0.0, 1e-6), (2e-4, 4.0, 0.1, 5e-5)])
def test_groups_match_peft(use_dora, lr, ratio, wd, lr_emb):
    model = _peft_model(use_dora)
    ref = peft_create_loraplus_optimizer(
        model, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=ratio, loraplus_weight_decay=wd, loraplus_lr_embedding=lr_emb
    )
    ours = loraplus_param_groups(model, lr, ratio, loraplus_weight_decay=wd, loraplus_lr_embedding=lr_emb)
    id_to_name = {id(p): n for n, p in model.named_parameters()}
    assert len(ours) == len(ref.param_groups) == 4
    for g_ours, g_ref in zip(ours, ref.param_groups):
        assert g_ours["names"] == [id_to_name[id(p)] for p in g_ref["params"]]
        assert [id(p) for p in g_ours["params"]] == [id(p) for p in g_ref["params"]]
        assert g_ours["lr"] == g_ref["lr"] and g_ours["weight_decay"] == g_ref["weight_decay"]
    names = [g["names"] for g in ours]
    assert all(n for n in names), f"every group should be exercised: {names}"
    assert all("lora_B" in n or "bias" in n or "norm" in n or "magnitude" in n for n in names[2] + names[3])


def test_weight_decay_keyword_is_ignored_use_loraplus_weight_decay():
    """The pitfall of the README: `weight_decay=` only sets the optimizer default, which every group overrides."""
    model = _peft_model(use_dora=False)
    ref = peft_create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16, weight_decay=0.1)
    assert [g["weight_decay"] for g in ref.param_groups] == [0.0, 0.0, 0.0, 0.0]
    ours = create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16, weight_decay=0.1)
    assert [g["weight_decay"] for g in ours.param_groups] == [0.0, 0.0, 0.0, 0.0]


def test_b_moves_ratio_times_faster_on_our_lora_layers():
    """Adam's first step moves each weight by about lr, so B moves by ratio * lr; A (grad 0 while B = 0) stays."""
    model = add_adapters(nn.Sequential(nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 8)), ["0", "2"], r=4, alpha=8)
    lr, ratio = 1e-3, 16.0
    opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=ratio)
    assert [len(g["params"]) for g in opt.param_groups] == [2, 0, 2, 0]
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model(torch.randn(16, 32)).pow(2).mean().backward()
    opt.step()
    step = {n: (p - before[n]).abs().max().item() for n, p in model.named_parameters() if p.requires_grad}
    assert step["0.lora_B"] == pytest.approx(lr * ratio, rel=1e-2)
    assert step["0.lora_A"] == 0.0
