"""LoRA+: give B a learning rate `ratio` times larger than A's.

Hayou, Ghosh & Yu (2024), "LoRA+: Efficient Low Rank Adaptation of Large Models", arXiv:2402.12354.
In the infinite-width limit, one shared learning rate cannot be right for both matrices: A multiplies
an input of width `in` while B starts at zero and feeds the output, so with one lr either B learns too
slowly or A's update blows up. Setting lr_B = ratio * lr_A (ratio about 16 in the paper) fixes it at no
cost: same parameters, same forward, only the optimizer's parameter groups change.

This rebuilds the groups of `peft.optimizers.create_loraplus_optimizer` (peft 0.21) rule for rule, so
the tests can compare them group by group:

    group 0  A side     : every trainable 2-D tensor not named lora_B           lr,           wd = loraplus_weight_decay
    group 1  embedding  : the adapter tensors of a LoRA *embedding* layer       lr_embedding, wd = loraplus_weight_decay
    group 2  B side     : lora_B and every 1-D tensor (DoRA magnitude, biases,  ratio * lr,   wd = loraplus_weight_decay
                          norms), if it is a "decay" tensor
    group 3  B, no decay: the same for biases and nn.LayerNorm parameters       ratio * lr,   wd = 0

Pitfall (measured in the test): a `weight_decay=` keyword is passed to the optimizer only as its
default, and every group sets its own `weight_decay`, so it has no effect. Use `loraplus_weight_decay`.
"""

import torch
from torch import nn


def _no_decay_names(model: nn.Module) -> set[str]:
    """Names that get no weight decay: biases and anything inside an nn.LayerNorm (as HF Trainer does)."""
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm):
            names |= {f"{module_name}.{n}" if module_name else n for n, _ in module.named_parameters()}
    names |= {n for n, _ in model.named_parameters() if "bias" in n}
    return names


def _is_lora_embedding(model: nn.Module, param_name: str) -> bool:
    """True for tensors held two levels below a LoRA embedding layer (`emb.lora_embedding_A.default`).

    peft checks `isinstance(owner, peft.tuners.lora.Embedding)`; every peft LoRA layer has a
    `lora_embedding_A` dict, but only embedding layers fill it, so "non-empty" is the same test.
    """
    owner_name = ".".join(param_name.split(".")[:-2])
    if not owner_name:
        return False
    return len(getattr(model.get_submodule(owner_name), "lora_embedding_A", ())) > 0


def loraplus_param_groups(
    model: nn.Module,
    lr: float,
    loraplus_lr_ratio: float,
    loraplus_weight_decay: float = 0.0,
    loraplus_lr_embedding: float = 1e-6,
) -> list[dict]:
    """The four LoRA+ parameter groups, each with a `names` list so you can see what went where."""
    no_decay = _no_decay_names(model)
    groups = {key: ([], []) for key in ("A", "embedding", "B", "B_no_decay")}  # key -> (names, params)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if _is_lora_embedding(model, name):
            key = "embedding"
        elif "lora_B" in name or param.ndim == 1:
            key = "B_no_decay" if name in no_decay else "B"
        else:
            key = "A"
        groups[key][0].append(name)
        groups[key][1].append(param)
    settings = {
        "A": (lr, loraplus_weight_decay),
        "embedding": (loraplus_lr_embedding, loraplus_weight_decay),
        "B": (lr * loraplus_lr_ratio, loraplus_weight_decay),
        "B_no_decay": (lr * loraplus_lr_ratio, 0.0),
    }
    return [
        {"names": names, "params": params, "lr": settings[key][0], "weight_decay": settings[key][1]}
        for key, (names, params) in groups.items()
    ]


def create_loraplus_optimizer(
    model: nn.Module,
    optimizer_cls: type[torch.optim.Optimizer],
    *,
    lr: float,
    loraplus_lr_ratio: float,
    loraplus_weight_decay: float = 0.0,
    loraplus_lr_embedding: float = 1e-6,
    **kwargs,
) -> torch.optim.Optimizer:
    """An optimizer over the LoRA+ groups (the `names` key is dropped: optimizers only want tensors)."""
    groups = loraplus_param_groups(model, lr, loraplus_lr_ratio, loraplus_weight_decay, loraplus_lr_embedding)
    groups = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    return optimizer_cls(groups, lr=lr, **kwargs)
