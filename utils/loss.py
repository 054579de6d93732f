"""The training loss of a causal LM, in one place: `causal_lm_loss`, which every training path calls (SFT's plain
path and chunked_loss, pretraining's plain loop and --fused_ce). It adds every auxiliary term the model adds to its
own loss (an MoE model's load-balancing loss), so no fast path can drop one.

Backend "chunked" (`chunked_loss: true`): cross-entropy over the vocabulary without materialising the logits.
A large vocabulary makes the logits the largest tensor of a small model's step (tokens x vocabulary, in bf16), and
the plain loss adds an fp32 copy and an fp32 log-softmax, and their gradient (bench/README.md has sizes). Here the
output head and the loss run on a chunk of tokens at a time, and each chunk's gradient is computed right away (the
loss is a sum, so d loss / d hidden is known in the forward): only one chunk's logits and their gradient exist at
once. Liger's fused linear-cross-entropy does the same, but sizes chunks so small for a large vocabulary (a few
dozen tokens) that the step is dominated by hundreds of launches and re-reads of the head, and it reads the token count
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


def check_model(config) -> None:
    """Refuse chunked_loss for a model whose training loss it would not reproduce (utils/step_plan.py's
    MODEL_CAPABILITIES says which models it reproduces)."""
    from utils.step_plan import capability_problems
    problems = capability_problems(config, chunked_loss=True)
    if problems:
        raise ValueError("; ".join(problems))


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
        # in place: a trained head's fp32 gradient is vocabulary x hidden, a large tensor; no second copy.
        # (A second backward through this graph then fails autograd's version check instead of double-scaling.)
        grad_w = grad_weight.mul_(scale).to(ctx.dtypes[1]) if grad_weight is not None else None
        return grad_h, grad_w, None, None, None, None, None


def next_token_labels(labels: torch.Tensor) -> torch.Tensor:
    """HF-convention labels (aligned with input_ids) shifted so that position t holds the label of token t+1."""
    return torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]


def chunked_causal_lm_loss(hidden: torch.Tensor, head: torch.nn.Linear, labels: torch.Tensor | None,
                           num_items_in_batch: torch.Tensor | int | None = None,
                           softcap: float | None = None, shift_labels: torch.Tensor | None = None) -> torch.Tensor:
    """transformers' causal-LM loss (token t predicts label t+1, summed over supervised tokens and divided by
    num_items_in_batch, else their count) from the last hidden states [B, T, h] and the output head (its logits
    soft-capped at `softcap` first, as Gemma 2/3 do). shift_labels: labels already shifted, instead of labels."""
    if head.bias is not None:
        raise ValueError("chunked_loss supports output heads without bias")
    labels = (next_token_labels(labels) if shift_labels is None else shift_labels).reshape(-1)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    if num_items_in_batch is None:
        num_items_in_batch = (labels != IGNORE_INDEX).sum()
    num_items = torch.as_tensor(num_items_in_batch, device=hidden.device).float()
    chunk = chunk_tokens(head.weight.shape[0], torch.finfo(compute_dtype(hidden)).bits // 8)
    differentiable = torch.is_grad_enabled() and (hidden.requires_grad or head.weight.requires_grad)
    return ChunkedLinearCrossEntropy.apply(hidden, head.weight, labels, num_items, chunk, differentiable, softcap)


# --------------------------------------------------------------------------- the one loss seam

BACKENDS = ("model", "chunked", "liger")


def causal_lm_loss(model, inputs: dict, labels: torch.Tensor | None = None,
                   num_items: torch.Tensor | int | None = None, backend: str = "model",
                   shift_labels: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss of a causal LM: next-token cross-entropy by `backend`, plus every auxiliary term the model
    adds to its own loss (the MoE load-balancing loss). Every training path calls this.

    inputs: the model's inputs without labels. labels: aligned with input_ids (HF convention, shifted here), or
    shift_labels: already shifted (pretraining's windows). num_items: the summed cross-entropy is divided by it (the
    Trainer's supervised-token count of the whole accumulation window); None: the mean over supervised tokens.
    Backends: "model", the model's forward computes its own loss (its auxiliary terms included); "chunked", the
    decoder's last hidden states through chunked_causal_lm_loss (the logits never exist); "liger", the model's
    logits through liger-kernel's cross-entropy kernel on CUDA (torch's elsewhere: the same math).
    Nothing here reads a value back to the host: CUDA graphs capture the chunked path."""
    if backend == "model":
        extra = {"labels": labels, "shift_labels": shift_labels, "num_items_in_batch": num_items}
        return model(**inputs, **{k: v for k, v in extra.items() if v is not None}).loss
    if shift_labels is None:
        shift_labels = next_token_labels(labels)
    if backend == "chunked":
        causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # past peft's wrapper
        check_model(causal_lm.config)  # a model whose loss the decoder's output cannot give is refused
        out = causal_lm.get_decoder()(**inputs)
        loss = chunked_causal_lm_loss(out.last_hidden_state, causal_lm.get_output_embeddings(), None, num_items,
                                      head_softcap(causal_lm.config), shift_labels=shift_labels)
        return with_auxiliary_loss(loss, causal_lm.config, out)
    if backend == "liger":
        out = model(**inputs)
        cross_entropy = logits_cross_entropy(out.logits.device)
        return with_auxiliary_loss(cross_entropy(out.logits, shift_labels, num_items), model.config, out)
    raise ValueError(f"loss backend must be one of {BACKENDS}, got {backend!r}")


def with_auxiliary_loss(loss: torch.Tensor, config, output) -> torch.Tensor:
    """The language-modelling loss plus the terms the model adds to it, read from its own or its decoder's output:
    the MoE load-balancing loss (Etude's decoder returns it as aux_loss; transformers' MoE models return it from the
    causal-LM forward when output_router_logits is on) times router_aux_loss_coef. The loss itself for a model
    without them."""
    aux, coef = getattr(output, "aux_loss", None), getattr(config, "router_aux_loss_coef", 0.0)
    return loss + coef * aux if aux is not None and coef else loss


def logits_cross_entropy(device: torch.device):
    """The "liger" backend's cross-entropy: (logits [B, T, V], shift_labels [B, T], num_items) -> loss. On CUDA
    liger-kernel's kernel, which writes the logits' gradient over the logits in the forward (no fp32 copy, no
    second pass in the backward); elsewhere torch's, computed as the models' own loss is (fp32 logits)."""
    if device.type == "cuda":
        from liger_kernel.transformers.functional import liger_cross_entropy as cross_entropy
    else:
        def cross_entropy(logits, target, ignore_index, reduction):
            return torch.nn.functional.cross_entropy(logits.float(), target, ignore_index=ignore_index,
                                                     reduction=reduction)

    def loss(logits, shift_labels, num_items=None):
        value = cross_entropy(logits.flatten(0, -2), shift_labels.flatten(), ignore_index=IGNORE_INDEX,
                              reduction="mean" if num_items is None else "sum")
        return value if num_items is None else value / torch.as_tensor(num_items, device=value.device)
    return loss
