"""LoRA in plain PyTorch: a frozen linear layer plus a trainable low-rank update.

    y = W0 x + b + (alpha / r) * B (A dropout(x))

W0 (out x in) and b stay frozen. A (r x in) and B (out x r) are the only trainable tensors, so a layer
trains r * (in + out) numbers instead of in * out. B starts at zero, which makes the wrapped layer
compute exactly the frozen layer at step 0: fine-tuning starts from the pretrained model, not near it.

The layout and the arithmetic follow peft (`peft.tuners.lora.layer.Linear`) on purpose:
tests/llm_tricks/test_lora.py copies the same W0, A and B into both and checks that outputs and
gradients agree. The other adapter tricks (rsLoRA, DoRA, PiSSA, LoRA+) build on this class.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class LoRALinear(nn.Module):
    """Wrap an `nn.Linear` with a LoRA adapter of rank `r`.

    Attribute names (`lora_A`, `lora_B`) match the ones peft uses in parameter names, which is what
    LoRA+ keys its learning rates on (see llm_tricks/lora_plus).
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16, dropout: float = 0.0):
        super().__init__()
        if r <= 0:
            raise ValueError(f"rank r must be positive, got {r}")
        self.base = base
        for p in self.base.parameters():  # the pretrained weights are frozen
            p.requires_grad_(False)
        self.r, self.alpha = r, alpha
        self.scaling = self.compute_scaling(alpha, r)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=w.dtype, device=w.device))
        # A: the default init of nn.Linear (Kaiming uniform), as in Microsoft's loralib and peft.
        # B = 0, so B @ A = 0 and the adapter starts as a no-op.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        # Dropout acts on the adapter's input only; the frozen path always sees the clean x.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    @staticmethod
    def compute_scaling(alpha: float, r: int) -> float:
        """alpha / r (LoRA paper, section 4.1). rsLoRA overrides this with alpha / sqrt(r)."""
        return alpha / r

    def lora_forward(self, x: torch.Tensor) -> torch.Tensor:
        """B(A(x)) without scaling: two thin matmuls, never the full out x in product B @ A."""
        return F.linear(F.linear(x, self.lora_A), self.lora_B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        if self.merged:  # W0 already holds W0 + scaling * B @ A
            return result
        return result + self.lora_forward(self.dropout(x)) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """The dense update the adapter stands for: scaling * B @ A, shape (out, in)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapter into W0 so inference costs one matmul again (no extra latency)."""
        if not self.merged:
            self.base.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo `merge` (exact up to float rounding), e.g. to keep training or swap adapters."""
        if self.merged:
            self.base.weight -= self.delta_weight()
            self.merged = False


def add_adapters(model: nn.Module, target_names: list[str], layer_cls=LoRALinear, **kwargs) -> nn.Module:
    """Replace every `nn.Linear` whose attribute name is in `target_names` by `layer_cls(linear, **kwargs)`.

    Everything else in the model is frozen, so only the adapter tensors train. This is what
    `peft.get_peft_model(model, LoraConfig(target_modules=...))` does, minus the bookkeeping.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if name in target_names and isinstance(child, nn.Linear)
    ]
    for parent, name, child in targets:  # collect first, then replace: never mutate while iterating
        setattr(parent, name, layer_cls(child, **kwargs))
    return model
