"""Cross-entropy over the vocabulary without materialising the logits: `chunked_loss: true`.

A 152k-word vocabulary makes the logits the largest tensor of a small model's step: 4,400 tokens x 152k words is
1.3 GB in bf16, and the plain loss adds an fp32 copy and an fp32 log-softmax (~8 GB with its gradient). Here the
output head and the loss run on a chunk of tokens at a time, and each chunk's gradient is computed right away (the
loss is a sum, so d loss / d hidden is known in the forward): only one chunk's logits and their gradient exist at
once. Liger's fused linear-cross-entropy does the same, but sizes chunks so small for a large vocabulary (32 tokens
here) that the step is dominated by hundreds of launches and re-reads of the head, and it reads the token count
back to the host (a sync that rules out CUDA graphs). Chunks here are sized by a memory budget (CHUNK_BYTES).

Gradients match the plain path: d loss / d logits = softmax - onehot, in fp32, stored in the logits' dtype (as
liger does); the tests compare losses and gradients with transformers' own loss.
"""
from __future__ import annotations

import torch

from chat_template import IGNORE_INDEX

CHUNK_BYTES = 256 * 2**20  # one chunk's logits and their gradient (2 + 2 bytes per logit in bf16)


def chunk_tokens(vocab_size: int, element_size: int) -> int:
    """Tokens per chunk: as many as fit CHUNK_BYTES, a multiple of 64 (whole GEMM tiles), at least 64."""
    return max(64, CHUNK_BYTES // (2 * element_size * vocab_size) // 64 * 64)


def _chunk_loss_and_grad(logits: torch.Tensor, labels: torch.Tensor,
                         softcap: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of one chunk and its gradient w.r.t. the logits (softmax - onehot on supervised rows).
    Written as one reduction and one elementwise expression (no scatter), so that compiled it is two kernels that
    read the logits and write the gradient in their own dtype, with no fp32 copy in between.

    softcap (Gemma 2/3's final_logit_softcapping c): the model's logits are c * tanh(z / c) of the head's output z,
    so the gradient w.r.t. z is the softmax's times d/dz c * tanh(z / c) = 1 - tanh(z / c)^2."""
    x = logits.float()
    if softcap:
        x = softcap * torch.tanh(x / softcap)
    valid = (labels != IGNORE_INDEX).unsqueeze(1)
    target = labels.clamp(min=0).unsqueeze(1)
    lse = torch.logsumexp(x, dim=-1, keepdim=True)
    loss = ((lse - x.gather(1, target)) * valid).sum()
    onehot = torch.arange(x.shape[1], device=x.device).unsqueeze(0) == target
    grad = (torch.exp(x - lse) - onehot.float()) * valid
    if softcap:
        grad = grad * (1 - (x / softcap) ** 2)
    return loss, grad.to(logits.dtype)


# Causal LMs whose logits are the output head's, at most soft-capped (final_logit_softcapping): the loss computed
# here is then the model's. Others scale or shift their logits (Cohere's logit_scale, Granite's logits_scaling, ...),
# which this loss would silently leave out.
MODEL_TYPES = ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "llama", "mistral", "gemma", "gemma2", "gemma3_text",
               "phi3", "etude")


def check_model(config) -> None:
    """Refuse chunked_loss for a model whose training loss it would not reproduce."""
    if config.model_type not in MODEL_TYPES:
        raise ValueError(f"chunked_loss reproduces the loss of models whose logits are the output head's "
                         f"({', '.join(MODEL_TYPES)}); {config.model_type!r} is not among them: set chunked_loss false")
    if getattr(config, "output_router_logits", False):
        raise ValueError("chunked_loss leaves out the router's load-balancing loss that output_router_logits adds: "
                         "set chunked_loss false, or output_router_logits false in the model's config")


def head_softcap(config) -> float | None:
    return getattr(config, "final_logit_softcapping", None)


_compiled_chunk = None


def chunk_fn(device: torch.device):
    """On CUDA, the chunk's softmax math compiled into two fused kernels that never hold fp32 logits."""
    global _compiled_chunk
    if device.type != "cuda":
        return _chunk_loss_and_grad
    if _compiled_chunk is None:
        _compiled_chunk = torch.compile(_chunk_loss_and_grad, dynamic=True)
    return _compiled_chunk


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The matmul dtype the plain path would use: autocast's (bf16 under mixed precision), else the tensor's own.
    (QLoRA keeps the head in fp32; autocast still runs its matmul in bf16.)"""
    return torch.get_autocast_dtype(t.device.type) if torch.is_autocast_enabled(t.device.type) else t.dtype


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, num_items, chunk, differentiable, softcap):
        """differentiable False (evaluation, under no_grad): the loss only, no gradient buffers."""
        fn = chunk_fn(hidden.device)
        dtype = compute_dtype(hidden)
        x, w = hidden.to(dtype), weight.to(dtype)
        grad_x = torch.empty_like(x) if differentiable else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if differentiable and weight.requires_grad \
            else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, x.shape[0], chunk):
            h = x[start:start + chunk]
            loss, grad_logits = fn(h @ w.t(), labels[start:start + chunk], softcap)
            total += loss
            if grad_x is not None:
                torch.mm(grad_logits, w, out=grad_x[start:start + chunk])
            if grad_weight is not None:
                grad_weight += (grad_logits.t() @ h).float()
        ctx.save_for_backward(grad_x, grad_weight, num_items)
        ctx.dtypes = hidden.dtype, weight.dtype
        return total / num_items

    @staticmethod
    def backward(ctx, grad_output):
        grad_x, grad_weight, num_items = ctx.saved_tensors
        scale = grad_output / num_items
        grad_h = (grad_x * scale.to(grad_x.dtype)).to(ctx.dtypes[0])
        # in place: a trained head's fp32 gradient is vocabulary x hidden (0.5 GB on Qwen2.5-0.5B); no second copy.
        # (A second backward through this graph then fails autograd's version check instead of double-scaling.)
        grad_w = grad_weight.mul_(scale).to(ctx.dtypes[1]) if grad_weight is not None else None
        return grad_h, grad_w, None, None, None, None, None


def chunked_causal_lm_loss(hidden: torch.Tensor, head: torch.nn.Linear, labels: torch.Tensor,
                           num_items_in_batch: torch.Tensor | int | None = None,
                           softcap: float | None = None) -> torch.Tensor:
    """transformers' causal-LM loss (token t predicts label t+1, summed over supervised tokens and divided by
    num_items_in_batch, else their count) from the last hidden states [B, T, h] and the output head (its logits
    soft-capped at `softcap` first, as Gemma 2/3 do)."""
    if head.bias is not None:
        raise ValueError("chunked_loss supports output heads without bias")
    labels = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].reshape(-1)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    if num_items_in_batch is None:
        num_items_in_batch = (labels != IGNORE_INDEX).sum()
    num_items = torch.as_tensor(num_items_in_batch, device=hidden.device).float()
    chunk = chunk_tokens(head.weight.shape[0], torch.finfo(compute_dtype(hidden)).bits // 8)
    differentiable = torch.is_grad_enabled() and (hidden.requires_grad or head.weight.requires_grad)
    return ChunkedLinearCrossEntropy.apply(hidden, head.weight, labels, num_items, chunk, differentiable, softcap)
