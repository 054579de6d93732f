"""rsLoRA: the same LoRA layer, scaled by alpha / sqrt(r) instead of alpha / r.

Kalajdzievski (2023), "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA",
arXiv:2312.03732, shows that the adapter output B A x stays of the same order as the rank grows
only if the scaling factor is Theta(1 / sqrt(r)). With alpha / r, raising r shrinks the update, its
gradients collapse, and a rank-256 adapter learns about as much as a rank-8 one.

Nothing else changes: parameters, initialisation, merge and inference cost are LoRA's. The test
checks equality with peft `LoraConfig(use_rslora=True)`.
"""

import math

from llm_tricks.lora.lora import LoRALinear


def rslora_scaling(alpha: float, r: int) -> float:
    """gamma_r = alpha / sqrt(r): the rank-stabilising factor of the rsLoRA paper."""
    return alpha / math.sqrt(r)


class RSLoRALinear(LoRALinear):
    """`LoRALinear` with the rank-stabilised scaling factor."""

    @staticmethod
    def compute_scaling(alpha: float, r: int) -> float:
        return rslora_scaling(alpha, r)
