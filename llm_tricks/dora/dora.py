"""DoRA: split each weight row into a trainable length (magnitude) and a direction trained with LoRA.

Liu et al. (2024), "DoRA: Weight-Decomposed Low-Rank Adaptation", arXiv:2402.09353, eq. (5):

    W' = m * (W0 + s B A) / ||W0 + s B A||_c

The paper writes W as (d x k) acting on column vectors and takes the norm of each column. PyTorch and
peft store W as (out, in) and compute x @ W.T, so one output neuron's weights are a *row* and the norm
is `torch.linalg.norm(W, dim=1)`: one magnitude per output feature, shape (out,).

Two details decide whether we match peft to the last bit, and both are in the paper:
- m starts at ||W0 + s B A||_c (eq. 5 at step 0), so W' == W0 at init whatever the init of B A is.
- The norm is treated as a constant in backward (section 4.3): it is computed from the current
  weights but detached, which saves the memory of its graph and, the paper reports, barely changes
  the result. Gradients still reach A and B through the numerator and m through the product.
"""

import torch
import torch.nn.functional as F
from torch import nn

from llm_tricks.lora.lora import LoRALinear


class DoRALinear(LoRALinear):
    """LoRA plus a learnable per-output-row magnitude `m` (called `lora_magnitude_vector` in peft)."""

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16, dropout: float = 0.0):
        super().__init__(base, r=r, alpha=alpha, dropout=dropout)
        w = base.weight
        self.magnitude = nn.Parameter(torch.empty(base.out_features, dtype=w.dtype, device=w.device))
        self.init_magnitude()

    def weight_norm(self) -> torch.Tensor:
        """||W0 + s B A|| over dim=1 (each output row), shape (out,)."""
        weight = self.base.weight + self.scaling * (self.lora_B @ self.lora_A)
        return torch.linalg.norm(weight, dim=1)

    @torch.no_grad()
    def init_magnitude(self) -> None:
        """m <- ||W0 + s B A||. Call again if you overwrite A or B (e.g. when loading weights)."""
        self.magnitude.copy_(self.weight_norm())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        if self.merged:
            return result
        # Section 4.3: the norm is a constant for autograd.
        mag_norm_scale = self.magnitude / self.weight_norm().detach()  # (out,)
        bias = self.base.bias
        if isinstance(self.dropout, nn.Identity) or not self.training:
            x_d = x
            base_out = result - bias if bias is not None else result  # reuse W0 x, no second matmul
        else:
            # With dropout, the *update* W' - W0 sees the dropped input, like LoRA's B A does.
            x_d = self.dropout(x)
            base_out = F.linear(x_d, self.base.weight)
        # W' x_d = (m / ||.||) * (W0 x_d + s B A x_d); we already have W0 x in `result`, so add W' x_d - W0 x_d.
        lora_out = self.lora_forward(x_d)
        return result + (mag_norm_scale - 1) * base_out + mag_norm_scale * lora_out * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """W0 <- m / ||W0 + s B A|| * (W0 + s B A). The norm is kept, because unmerge needs it."""
        if not self.merged:
            weight = self.base.weight + self.delta_weight()
            self._merged_norm = torch.linalg.norm(weight, dim=1)
            self.base.weight.copy_((self.magnitude / self._merged_norm).unsqueeze(1) * weight)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            scale = (self.magnitude / self._merged_norm).unsqueeze(1)
            self.base.weight.copy_(self.base.weight / scale - self.delta_weight())
            self.merged = False
