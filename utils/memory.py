"""Peak GPU memory of a training step, predicted before anything is loaded (`main_train.py --dry_run`).

The model is built on the meta device (shapes only, no weights, no download beyond the config), the adapters are
attached as the run would, and the peak is summed from parts a learner can reason about:

    weights      frozen + trainable parameters in their dtype (4-bit NF4 + absmax constants for QLoRA layers)
    optimizer    AdamW's two moments per trainable parameter (same dtype; 8-bit optimizers: 1 byte each)
    gradients    one per trainable parameter, in its dtype
    activations  with checkpointing: every layer's input (none with offload_checkpoints: in host memory);
                 without: every layer's saved tensors; with transformers' every_n_layers N: the input of layers
                 0, N, 2N, ..., the saved tensors of the others. Plus the attention mask for packed or padded
                 rows. (QLoRA on an fp16 / fp32 base: the residual stream is fp32, as utils/model.py's
                 prepare_quantized keeps embeddings and norms in fp32.)
    loss_or_layer  the larger of two moments. At the loss: the full-vocabulary logits (bf16 logits, their fp32
                 copy, fp32 log-softmax and its gradient: LOGIT_BYTES per logit), liger's fused linear +
                 cross-entropy buffers, or chunked_loss's hidden-state gradient and one chunk of logits
                 (utils/loss.py). At the backward of the last layer (the first differentiated): its saved
                 tensors (recomputed, under checkpointing) and the gradients of the same size its backward creates.
    workspace    allocator and library scratch (cuBLAS workspace, fragmentation): WORKSPACE_MIN plus
                 WORKSPACE_FRACTION of the rest.

LOGIT_BYTES and the workspace were fitted to the measured peaks of bench rows; bench/README.md compares
prediction and peak on every bench row. They describe PyTorch's allocations for Llama-shaped decoders (Qwen, Llama,
Yi, Mistral, Gemma, Phi-3).
"""
from __future__ import annotations

import dataclasses
import math
import os

import torch

from utils.loss import chunk_tokens
from utils.step_plan import ArgsView, checkpointing_as_run, checkpointing_fields, resolve

GB = 1e9
LOGIT_BYTES = 12          # bf16 logits (2) + fp32 upcast (4) + fp32 log-softmax / its gradient (4) + bf16 grad (2)
WORKSPACE_FRACTION = 0.01
WORKSPACE_MIN = 0.15 * GB
FIT_STEP = 256            # memory_budget_gb: cap granularity without CUDA graphs (with them: the bucket)
EIGHT_BIT_OPTIMIZERS = {"adamw_8bit": 1, "paged_adamw_8bit": 1, "adamw_bnb_8bit": 1}  # bytes per state
# DoRA, per output feature of each adapted linear and token. Kept for the backward: eager autograd keeps the base
# output and the LoRA output (bf16, 2 + 2; counted in tests/utils/test_memory.py); a compiled layer on the GPU keeps
# less, read off the DoRA bench row without checkpointing (bench/README.md): the magnitude's gradient needs only
# their sum. While a layer is differentiated, its DoRA tensors and their fp32 gradients: 6 (checkpointed rows).
DORA_KEPT_BYTES = {False: 4, True: 2.5}
# fused_lora puts the scale on the weights (utils/fused_lora.py) and keeps each output (2 bytes), which the next op
# keeps anyway after v, gate and up (attention, SiLU, the product): what is left, q, k, o and down, averages 0.42-0.53
# bytes over a layer's output features at the 0.5B-7B shapes (counted eagerly in tests/utils/test_memory.py). A
# compiled layer also keeps each scaled weight g ⊙ W for its backward instead of scaling W again (most of what a GPU
# count of a compiled layer found: bench/README.md, sixteenth session), counted per layer by the weights' size
# (dora_scaled_weight_bytes). While a layer is differentiated: the product dy ⊙ y (2, eager).
FUSED_DORA_KEPT_BYTES = 0.5
DORA_BACKWARD_BYTES = {False: 6, True: 2}  # by fused_lora


def worst_batch_tokens(lengths: list[int], batch_size: int, padding_free: bool,
                       bucket: int = 1, max_tokens: int = 0) -> tuple[int, int, int]:
    """(tokens fed, tokens per row, rows) of the largest micro-batch the data can form: the batch_size longest
    samples, packed into one row, or padded to the longest sample. max_tokens (micro_batch_max_tokens): the
    longest piece the row is split into, at most max_tokens unless one sample is longer."""
    longest = sorted(lengths, reverse=True)[:batch_size]
    if padding_free:
        tokens = sum(longest)
        if max_tokens:
            tokens = min(tokens, max(max_tokens, longest[0]))
        tokens = -(-tokens // bucket) * bucket  # cuda_graphs pads the row to a multiple of its bucket
        return tokens, tokens, 1
    return len(longest) * longest[0], longest[0], len(longest)


def layer_activation_bytes(config, tokens: int, dtype_bytes: int = 2, residual_bytes: int = 2,
                           compiled: bool = False) -> int:
    """Tensors one decoder layer saves for its backward, per token. Eager: the residual-stream tensors (the inputs
    of the two norms, their outputs) with fp32 norm statistics, q/k/v and the attention output, and the MLP's gate,
    up, activation and product. Compiled (compile_layers): the partitioner recomputes the cheap elementwise ops in
    the backward and saves three MLP-wide tensors, four hidden-wide ones, q/k/v and the attention output, and one
    fp32 hidden-wide tensor. tests/utils/test_memory.py counts both on a Qwen2 layer under bf16 autocast."""
    h, inter = config.hidden_size, config.intermediate_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    q, kv = heads * head_dim, config.num_key_value_heads * head_dim
    if compiled:
        return tokens * (dtype_bytes * (3 * inter + 4 * h + 2 * q + 2 * kv) + 4 * h)
    per_token = residual_bytes * 4 * h + dtype_bytes * (2 * q + 2 * kv + 4 * inter) + 4 * 2 * h
    return tokens * per_token


def every_n_layers(args) -> int:
    """transformers' selective checkpointing (activation_checkpointing_kwargs every_n_layers): layers 0, n, 2n, ...
    are checkpointed, the others keep their activations (faster backward: no recompute, more memory)."""
    return int((getattr(args, "activation_checkpointing_kwargs", None) or {}).get("every_n_layers", 1))


def parameter_bytes(model, quantized_4bit: bool, upcast: bool) -> tuple[int, int, int]:
    """(frozen bytes, trainable bytes, trainable count) of a meta model. Under QLoRA the decoder's linear weights
    are NF4: half a byte per weight plus one byte per 64-weight block (double-quantized absmax constants); every
    other frozen tensor (embeddings, head, norms) keeps its dtype, or is fp32 where upcast (utils/model.py's
    qlora_upcasts_frozen_weights)."""
    frozen = trainable_bytes = trainable_count = 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            trainable_bytes += p.numel() * p.element_size()
            trainable_count += p.numel()
        elif quantized_4bit and p.dim() == 2 and "lm_head" not in name and "embed" not in name:
            frozen += p.numel() // 2 + math.ceil(p.numel() / 64)
        else:
            frozen += p.numel() * (4 if upcast else p.element_size())
    return frozen, trainable_bytes, trainable_count


def estimate_peak(model, args, tokens: int, row_len: int, rows: int, plan=None) -> dict[str, float]:
    """Predicted peak allocated memory of a training step, by part (GB), for a micro-batch of `rows` rows of
    `row_len` tokens (`tokens` = rows * row_len padded, or the packed total). plan: the run's StepPlan
    (utils/step_plan.py; omitted: the one the args describe), which says the loss backend, the attention's inputs and
    whether gradients are held in fixed buffers.

    The peak is the larger of two moments. At the loss: weights, optimizer states, the checkpointed layer inputs
    and the loss's own tensors (gradients exist then only when accumulating). At the end of the backward: weights,
    optimizer states, all gradients, and the layer being recomputed and differentiated."""
    config = model.config
    if plan is None:
        plan = resolve(args)
    else:  # the checkpointing the plan chose (memory_budget_gb) or completed (cuda_graphs' kwargs)
        args = checkpointing_as_run(args, plan)
    from utils.model import qlora_upcasts_frozen_weights
    upcast = qlora_upcasts_frozen_weights(args)  # QLoRA: fp32 embeddings, head and norms, so an fp32 residual
    frozen, trainable_bytes, trainable_count = parameter_bytes(model, args.train_mode == "qlora", upcast)
    optim = str(getattr(args.optim, "value", args.optim))
    optimizer = 2 * (trainable_count * EIGHT_BIT_OPTIMIZERS[optim] if optim in EIGHT_BIT_OPTIMIZERS
                     else trainable_bytes)
    layers, hidden = config.num_hidden_layers, config.hidden_size
    residual = 4 if upcast else 2
    compiled = bool(getattr(args, "compile_layers", False))
    one_layer = layer_activation_bytes(config, tokens, residual_bytes=residual, compiled=compiled)
    dora_kept = dora_backward = 0
    if getattr(args, "use_dora", False):  # per layer: DoRA's output-wide tensors (DORA_KEPT_BYTES above)
        bases = [m for n, m in model.named_modules() if n.endswith("base_layer") and hasattr(m, "out_features")]
        out_features = sum(m.out_features for m in bases) // layers
        fused = bool(getattr(args, "fused_lora", False))
        kept_bytes = FUSED_DORA_KEPT_BYTES if fused else DORA_KEPT_BYTES[compiled]
        scaled = dora_scaled_weight_bytes(bases, tokens) // layers if fused and compiled else 0
        dora_kept = int(kept_bytes * tokens * out_features) + scaled
        dora_backward = DORA_BACKWARD_BYTES[fused] * tokens * out_features + scaled
    # the boolean attention mask (block-diagonal when packed); varlen attention takes sample boundaries instead
    mask = 0 if plan.varlen else rows * row_len * row_len
    every_n = every_n_layers(args)
    checkpointed = -(-layers // every_n) if args.activation_checkpointing else 0
    full_layer = one_layer + dora_kept  # what a layer without checkpointing keeps until its backward
    on_device = 0 if plan.offload else checkpointed  # offload_checkpoints: the inputs wait in host memory
    kept = on_device * tokens * hidden * residual + (layers - checkpointed) * full_layer + mask
    head = model.get_output_embeddings().weight
    if plan.loss_backend == "chunked":  # utils/loss.py: d loss / d hidden, one chunk's logits + gradient,
        # a trained head's fp32 gradient and its cast to the head's dtype, an upcast QLoRA head's cast for the matmul
        chunk = min(tokens, chunk_tokens(config.vocab_size, head.element_size()))
        loss = tokens * hidden * head.element_size() + 2 * chunk * config.vocab_size * head.element_size() \
            + (head.numel() * (4 + head.element_size()) if head.requires_grad else 0) \
            + (head.numel() * 2 if upcast else 0)
    elif plan.loss_backend == "liger_fused":  # fused linear + CE: fp32 input grad, an fp32 head-sized buffer,
        # and the fp32 head gradient when the head is trained
        loss = tokens * hidden * 4 + head.numel() * 4 * (2 if head.requires_grad else 1)
    else:
        loss = tokens * config.vocab_size * LOGIT_BYTES
    # gradients exist before the backward when accumulating (also over a micro-batch's pieces), and always under
    # cuda_graphs (fixed buffers)
    held = args.gradient_accumulation_steps > 1 or plan.step_runner == "cuda_graph" or plan.max_tokens
    grads_at_loss = trainable_bytes if held else 0
    at_loss = dict(gradients=grads_at_loss, activations=kept, loss_or_layer=loss)
    # the backward of the last layer (the first one differentiated): everything kept is still there, and the layer
    # creates as many bytes of gradients as it saved. The backward of the last checkpointed layer: the layers after
    # it (not checkpointed, every_n_layers) have freed theirs, and it holds its recomputed tensors and gradients.
    moments = [dict(gradients=trainable_bytes, activations=kept, loss_or_layer=one_layer)]
    if checkpointed:
        freed = (layers - 1) % every_n  # the layers after the last checkpointed one, (layers - 1) // n * n
        moments.append(dict(gradients=trainable_bytes, activations=kept - freed * full_layer,
                            loss_or_layer=2 * one_layer + dora_backward))
    phase = max([at_loss, *moments], key=lambda d: sum(d.values()))
    parts = {"weights": frozen + trainable_bytes, "optimizer": optimizer, **phase}
    parts["workspace"] = WORKSPACE_MIN + WORKSPACE_FRACTION * sum(parts.values())
    parts = {k: v / GB for k, v in parts.items()}
    parts["total"] = sum(parts.values())
    return parts


def dora_scaled_weight_bytes(bases, tokens: int) -> int:
    """The scaled weights g ⊙ W a compiled fused DoRA keeps: those of the plain (not 4-bit) linears that a
    micro-batch of `tokens` scales (utils/fused_lora.py: at least as many tokens as input features)."""
    return sum(m.out_features * m.in_features * m.weight.element_size() for m in bases
               if type(m) is torch.nn.Linear and m.in_features <= tokens)


def meta_model(args, config=None, vocab_size: int | None = None):
    """The run's model with its adapters, on the meta device: real shapes and dtypes, no memory, no weights.
    config: a model config to use instead of args.model_name_or_path's (bench rows build from peer dimensions)."""
    from transformers import AutoModelForCausalLM

    from utils.model import apply_peft, resolve_dtype
    from utils.model_source import resolve_model_source
    if config is None:  # a preset's sized to the tokenizer, as build_model
        config = resolve_model_source(args.model_name_or_path, args.trust_remote_code).config(vocab_size)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(args),
                                                 trust_remote_code=args.trust_remote_code)
        if vocab_size and vocab_size > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(vocab_size, pad_to_multiple_of=64)
        if args.train_mode == "qlora":
            model.requires_grad_(False)
        return apply_peft(model, args)


def estimate_for_run(args, lengths: list[int], config=None, vocab_size: int | None = None, plan=None) -> str:
    """The --dry_run line: the prediction for the largest micro-batch these sample lengths can form."""
    plan = plan or resolve(args)
    tokens, row_len, rows = worst_batch_tokens(lengths, args.per_device_train_batch_size, plan.padding_free,
                                               plan.bucket or 1, plan.max_tokens)
    parts = estimate_peak(meta_model(args, config, vocab_size), args, tokens, row_len, rows, plan)
    return format_estimate(parts, tokens, rows, "piece" if plan.max_tokens else "micro-batch")


@dataclasses.dataclass(frozen=True)
class BudgetFit:
    """memory_budget_gb's choice: the pieces' cap (0: whole micro-batches), the checkpointing fields it set (empty:
    as given) and the reason, logged with the run's plan."""
    max_tokens: int
    fields: dict
    reason: str


def checkpointing_choices(layers: int) -> list[int]:
    """every_n_layers values, the fewest checkpointed layers first: 0 (none), then each n that checkpoints one
    layer more (layers 0, n, 2n, ...: ceil(layers / n) of them), down to 1 (every layer)."""
    found, counts = [0], set()
    for n in range(layers, 0, -1):
        if -(-layers // n) not in counts:
            counts.add(-(-layers // n))
            found.append(n)
    return found


def budget_chooses_checkpointing(args) -> bool:
    """The budget picks the checkpointing when the run has the default, every layer checkpointed: a given
    every_n_layers (1 included) or activation_checkpointing false is kept."""
    return bool(args.activation_checkpointing) and "every_n_layers" not in (args.activation_checkpointing_kwargs or {})


def fit_memory_budget(args, lengths: list[int], config=None, vocab_size: int | None = None,
                      plan=None) -> BudgetFit:
    """memory_budget_gb: what a run does to fit the budget. First the fewest checkpointed layers that let the whole
    micro-batch fit (none, then one layer in n, down to every layer; budget_chooses_checkpointing): recomputing
    checkpointed layers costs up to a third of a step, while whole micro-batches keep the step as given. When even
    every layer checkpointed does not fit, the largest micro_batch_max_tokens that does (fit_micro_batch_max_tokens).
    args is not changed: utils/step_plan.py's StepPlan holds the choice."""
    plan, model = plan or resolve(args), meta_model(args, config, vocab_size)
    if budget_chooses_checkpointing(args):
        bucket = plan.bucket or 1
        whole = worst_batch_tokens(lengths, args.per_device_train_batch_size, True, bucket)
        layers = model.config.num_hidden_layers
        for every_n in checkpointing_choices(layers)[:-1]:
            fields = checkpointing_fields(args, every_n)
            chosen = ArgsView(args, **fields)
            parts = estimate_peak(model, chosen, *whole, plan=resolve(chosen, plan.model_type, max_tokens=0))
            if parts["total"] <= args.memory_budget_gb:
                what = "no activation checkpointing" if every_n == 0 else \
                    f"checkpoint {-(-layers // every_n)} of {layers} layers (every_n_layers {every_n})"
                return BudgetFit(0, fields, f"memory_budget_gb {args.memory_budget_gb:g}: {what}, whole "
                                            f"micro-batches (predicted {parts['total']:.2f} GB)")
    cap, reason = fit_micro_batch_max_tokens(args, lengths, config, vocab_size, plan, model)
    return BudgetFit(cap, {}, reason)


def fit_micro_batch_max_tokens(args, lengths: list[int], config=None, vocab_size: int | None = None,
                               plan=None, model=None) -> tuple[int, str]:
    """(the largest micro_batch_max_tokens whose predicted peak fits memory_budget_gb, 0 when the whole
    micro-batch fits; the reason, to log), with the checkpointing args give. Caps are tried from the whole
    micro-batch down, in steps of the CUDA-graph bucket (else FIT_STEP tokens), to the longest sample, which no cap
    can split."""
    given = f" (replacing the given {args.micro_batch_max_tokens})" if args.micro_batch_max_tokens else ""
    model = model or meta_model(args, config, vocab_size)
    plan = plan or resolve(args)
    bucket = plan.bucket or 1
    step = bucket if bucket > 1 else FIT_STEP
    budget, batch = args.memory_budget_gb, args.per_device_train_batch_size

    def predicted(cap: int) -> dict[str, float]:
        runner = plan.step_runner if plan.step_runner == "cuda_graph" else "pieces" if cap else "plain"
        capped = dataclasses.replace(plan, max_tokens=cap, step_runner=runner)
        return estimate_peak(model, args, *worst_batch_tokens(lengths, batch, True, bucket, cap), plan=capped)

    whole = predicted(0)
    if whole["total"] <= budget:
        return 0, (f"memory_budget_gb {budget:g}: the whole micro-batch fits (predicted {whole['total']:.2f} GB), "
                   f"no pieces{given}")
    whole_tokens = worst_batch_tokens(lengths, batch, True, bucket)[0]
    smallest, parts = -(-max(lengths) // step) * step, whole
    for cap in range(-(-whole_tokens // step) * step - step, smallest - 1, -step):
        parts = predicted(cap)
        if parts["total"] <= budget:
            return cap, (f"memory_budget_gb {budget:g}: micro_batch_max_tokens {cap}{given} (predicted "
                         f"{parts['total']:.2f} GB; the whole micro-batch of {whole_tokens:,} tokens: "
                         f"{whole['total']:.2f} GB)")
    raise ValueError(f"memory_budget_gb {budget:g}: even a piece of {smallest:,} tokens (the longest sample) does "
                     f"not fit: {format_estimate(parts, smallest, 1, 'piece')}. Raise the budget, lower max_len, or "
                     f"train fewer weights (LoRA, QLoRA).")


def format_estimate(parts: dict[str, float], tokens: int, rows: int, unit: str = "micro-batch") -> str:
    body = ", ".join(f"{k} {v:.2f}" for k, v in parts.items() if k != "total")
    return (f"predicted peak GPU memory {parts['total']:.2f} GB for the largest {unit} ({rows} rows, {tokens:,} "
            f"tokens): {body} (GB)")


ALLOCATOR_SETTING = "expandable_segments:True"
ALLOCATOR_VARIABLES = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_HIP_ALLOC_CONF")  # the user's choice


def prefer_expandable_segments() -> str | None:
    """Let PyTorch's CUDA allocator grow its segments in place (expandable_segments) unless the user configured the
    allocator (ALLOCATOR_VARIABLES). Without it, a step whose tensors change size with each micro-batch's length, and
    each CUDA graph's private pool, leave gaps the allocator reserves but cannot reuse, so a card needs far more than
    --dry_run predicts (bench/README.md: reserved against allocated on the bench rows).
    Set on the running allocator, not through the environment: by the time a run starts, importing bitsandbytes has
    already started CUDA (it reads the GPU's compute capability). It applies to the segments reserved from then on,
    so call before the model is loaded. Returns the line to log (None: the user's setting, or no GPU)."""
    if any(name in os.environ for name in ALLOCATOR_VARIABLES):
        return None
    if not torch.cuda.is_available():
        return None
    torch.cuda.memory._set_allocator_settings(ALLOCATOR_SETTING)  # what the environment variable sets, at run time
    return (f"CUDA allocator: {ALLOCATOR_SETTING} (reserved memory stays close to what is allocated across "
            "micro-batches of many lengths; set PYTORCH_CUDA_ALLOC_CONF yourself to choose)")


def _cuda_in_use() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def reset_measured_peak() -> None:
    """Start the measured peak at the training loop, as the bench does: the estimate predicts a training step."""
    if _cuda_in_use():
        torch.cuda.reset_peak_memory_stats()


def measured_peak() -> str | None:
    """The line a GPU run logs when training ends, to compare with the prediction of --dry_run / memory_budget_gb:
    what this process's CUDA allocator held at its peak since reset_measured_peak (None without CUDA)."""
    if not _cuda_in_use():
        return None
    return (f"measured peak GPU memory in training {torch.cuda.max_memory_allocated() / GB:.2f} GB allocated "
            f"({torch.cuda.max_memory_reserved() / GB:.2f} GB reserved by the allocator) on this device")
