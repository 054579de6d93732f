"""PiSSA: start the adapter on the principal singular directions of W0 and freeze the rest.

Meng, Wang & Zhang (2024), "PiSSA: Principal Singular Values and Singular Vectors Adaptation of
Large Language Models", arXiv:2404.02948.

Write W0 = U S V^T (full SVD, singular values in decreasing order). PiSSA splits it in two:

    adapter   s B A = U[:, :r] S[:r] V[:, :r]^T     (the r largest directions, trainable)
    residual  W_res = W0 - s B A                     (all the other directions, frozen)

with B = U[:, :r] sqrt(S[:r] / s) and A = sqrt(S[:r] / s) V[:, :r]^T, so the LoRA scaling s cancels.
At step 0 the layer computes W_res x + s B A x = W0 x: nothing changes, but the trainable part now
holds the most important directions of W0 instead of LoRA's zero, so gradient steps move the
weights where they matter and training converges faster in the paper. Because B != 0 at init, the
first step already changes the output, and A gets a gradient from step 0 (with LoRA it does not,
since its gradient is B^T (...) = 0).

This is the exact SVD (`init_lora_weights="pissa"` in peft); `pissa_niter_k` uses a randomised SVD.
"""

import torch

from llm_tricks.lora.lora import LoRALinear


@torch.no_grad()
def pissa_init_(layer: LoRALinear) -> LoRALinear:
    """Initialise `layer` in place: A, B from the top-r SVD of W0, and W0 replaced by the residual."""
    weight = layer.base.weight
    dtype = weight.dtype
    # SVD in fp32 even for bf16 weights: small singular values are lost in 8 bits of mantissa.
    U, S, Vh = torch.linalg.svd(weight.float(), full_matrices=False)
    r = layer.r
    Ur, Sr, Vhr = U[:, :r], S[:r] / layer.scaling, Vh[:r]
    A = torch.diag(torch.sqrt(Sr)) @ Vhr  # (r, in)
    B = Ur @ torch.diag(torch.sqrt(Sr))  # (out, r)
    layer.lora_A.copy_(A)
    layer.lora_B.copy_(B)
    residual = weight.float() - layer.scaling * B @ A
    layer.base.weight.copy_(residual.to(dtype))
    return layer
