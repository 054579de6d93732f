"""Builders for the model side of a run: base model, 4-bit quantization, PEFT adapters, optimizer groups."""
from __future__ import annotations

import functools
import math

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import BitsAndBytesConfig, set_seed

import utils.attention  # noqa: F401  (registers attn_implementation "varlen" with transformers)
from utils.dora import compile_norm_refresh, use_factored_dora_norm
from utils.fused_lora import use_fused_lora
from utils.model_source import resolve_model_source

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_dtype(args) -> torch.dtype:
    """auto: bf16 weights when training in bf16, else fp32 (fp16 weights are for inference, not for training)."""
    if args.torch_dtype == "auto":
        return torch.bfloat16 if args.bf16 else torch.float32
    try:
        return DTYPES[args.torch_dtype]
    except KeyError:
        raise ValueError(f"torch_dtype must be auto or one of {list(DTYPES)}, got {args.torch_dtype!r}") from None


def build_quant_config(dtype: torch.dtype) -> BitsAndBytesConfig:
    """QLoRA's recipe: 4-bit NormalFloat weights, double-quantized absmax constants, matmuls in `dtype`."""
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=dtype)


def build_model(args, vocab_size: int | None = None):
    """The base model from a local folder, a hub id, or (for a preset, utils/model_source.py) fresh random weights.

    vocab_size: the tokenizer's size; embeddings grow to it when the tokenizer gained tokens, and a preset's
    vocabulary is sized to it. Seeded here, not only in the Trainer (which seeds after the model exists), so that
    `seed` fixes every random initialisation: a preset's weights, new embedding rows, and LoRA's A after this."""
    set_seed(args.seed)
    dtype = resolve_dtype(args)
    source = resolve_model_source(args.model_name_or_path, args.trust_remote_code)
    if source.from_scratch and args.train_mode != "full":
        raise ValueError(f"{args.model_name_or_path} is a preset with random weights: an adapter on it could "
                         "never be reloaded; use train_mode full, or pretrain first and pass the checkpoint")
    kwargs = dict(attn_implementation=args.attn_implementation)
    if args.train_mode == "qlora":
        kwargs["quantization_config"] = build_quant_config(dtype)
    model = source.load_model(dtype, vocab_size, **kwargs)
    rows = model.get_input_embeddings().weight.shape[0]
    if vocab_size is not None and vocab_size > rows:
        if args.tokenizer_name_or_path and not source.from_scratch:
            raise ValueError(f"tokenizer {args.tokenizer_name_or_path} has {vocab_size} tokens but model "
                             f"{args.model_name_or_path} has only {rows} embeddings: they do not belong together")
        model.resize_token_embeddings(vocab_size, pad_to_multiple_of=64)  # tokens we added (pad, control tokens)
    model.config.use_cache = False  # the KV cache is for generation; in training it only costs memory
    return prepare_quantized(model, args)


def qlora_upcasts_frozen_weights(args) -> bool:
    """Whether a QLoRA run holds its unquantized frozen weights (embeddings, output head, norms) in fp32, as peft's
    prepare_model_for_kbit_training casts every bf16 / fp16 weight. Not when they load in bf16: they are frozen, bf16
    has fp32's range, and the cast costs 4 bytes instead of 2 per weight, twice on the 7B shape's untied 545M-weight
    embeddings and head (2.2 GB), plus an fp32 residual stream; LoRA runs and unsloth's QLoRA keep bf16. An fp16 base
    is still cast: fp16's range overflows in the residual stream."""
    return args.train_mode == "qlora" and resolve_dtype(args) != torch.bfloat16


def prepare_quantized(model, args):
    """QLoRA: the 4-bit base frozen, its other weights cast to fp32 only where qlora_upcasts_frozen_weights says so
    (peft's prepare_model_for_kbit_training casts them all). Activation checkpointing is left to the Trainer, as for
    LoRA: it turns it on from the run's plan, which memory_budget_gb may have changed."""
    if args.train_mode != "qlora":
        return model
    if qlora_upcasts_frozen_weights(args):
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model.requires_grad_(False)


def build_peft_config(args) -> LoraConfig:
    init = args.init_lora_weights
    init = {"default": True, "true": True, "false": False}.get(str(init).lower(), init)
    return LoraConfig(
        task_type="CAUSAL_LM", r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        target_modules=args.lora_target_modules or "all-linear",  # peft's all-linear skips the output head
        use_dora=args.use_dora, use_rslora=args.use_rslora, init_lora_weights=init)


def embedding_module_names(model) -> list[str]:
    """Names (last part) of the input embedding and output head modules, for LoRA's modules_to_save."""
    wanted = [model.get_input_embeddings(), model.get_output_embeddings()]
    return list(dict.fromkeys(name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                              if any(module is w for w in wanted)))


def apply_peft(model, args):
    if args.train_mode == "full":
        return model
    config = build_peft_config(args)
    if args.train_new_tokens:  # control tokens were added (utils/tokenizer.py): their new rows must learn
        config.modules_to_save = embedding_module_names(model)
        config.ensure_weight_tying = bool(getattr(model.config, "tie_word_embeddings", False))
    model = get_peft_model(model, config)
    if args.factored_dora_norm:
        use_factored_dora_norm(model)
    if getattr(args, "fused_lora", False):
        use_fused_lora(model)
    return model


def compile_layers(model, args):
    """torch.compile each decoder layer's forward, with activation checkpointing kept outside the compiled graph.

    After peft, so the adapters are inside the graph. Per layer, not the whole model: the layers are identical, so
    dynamo traces one graph and reuses it for all of them (parameters are graph inputs), compiling in about a
    minute. (The whole 24-layer stack of a 0.5B model as one graph was tried: no result within 5.5 minutes on an
    H100.) The LM head and the loss stay eager, where chunked_loss or a fused linear + cross-entropy replaces them.

    Why the checkpoint stays outside: transformers checkpoints inside each layer's forward, so compiling the layer
    puts the checkpoint inside the graph, where the partitioner chooses what to save for the backward and keeps
    several activations per layer instead of the layer's input alone (tests/utils/test_compile_layers.py counts
    them). Outside, the checkpoint stores only the input and replays the compiled forward in the backward; a graph
    break (peft's DoRA forward has some) then splits the layer into pieces instead of sending it back to eager."""
    if not args.compile_layers:
        return model
    from transformers.modeling_layers import GradientCheckpointingLayer
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise ValueError(f"compile_layers: {type(model).__name__} has no decoder layers to compile")
    # One compiled forward per layer class, called with each layer as an argument: dynamo may keep an entry per
    # layer object, so the cache must hold them all before it gives up and runs eager.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 2 * len(layers))
    compiled = {}
    for layer in layers:
        cls = type(layer)
        plain = getattr(cls.forward, "__wrapped__", cls.forward)  # the forward inside transformers' checkpointing
        if cls not in compiled:
            compiled[cls] = torch.compile(plain, dynamic=True)
        layer.forward = functools.partial(_checkpointed_forward, layer, compiled[cls])
    compile_norm_refresh(model)  # factored_dora_norm's refresh before the layers, compiled as they are
    return model


@torch._dynamo.disable
def _checkpointed_forward(layer, forward, *args, **kwargs):
    """transformers' checkpointing switch (gradient_checkpointing_enable/disable set it), around the compiled
    forward; inputs that need grad stay positional, as a reentrant checkpoint requires."""
    if layer.gradient_checkpointing and layer.training:
        return layer._gradient_checkpointing_func(functools.partial(forward, layer, **kwargs), *args)
    return forward(layer, *args, **kwargs)


def build_optimizer(model, args):
    """LoRA+ parameter groups (B at ratio x the learning rate of A) through peft; None lets the Trainer build AdamW."""
    if not args.loraplus_lr_ratio:
        return None
    if args.train_mode == "full":
        raise ValueError("loraplus_lr_ratio needs train_mode lora or qlora")
    from peft.optimizers import create_loraplus_optimizer
    from transformers import Trainer
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    return create_loraplus_optimizer(model, optimizer_cls, lr=args.learning_rate,
                                     loraplus_lr_ratio=args.loraplus_lr_ratio,
                                     **{k: v for k, v in optimizer_kwargs.items() if k != "lr"},
                                     loraplus_weight_decay=args.weight_decay)  # peft ignores plain weight_decay


def parameter_count(p) -> int:
    """Parameters a tensor stands for. A bitsandbytes 4-bit weight (Params4bit) is packed storage, two or more
    4-bit values per stored element depending on bnb_4bit_quant_storage, so its numel() undercounts; its
    quant_state records the real shape."""
    shape = getattr(getattr(p, "quant_state", None), "shape", None)
    return math.prod(shape) if shape is not None else p.numel()


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(parameter_count(p) for p in model.parameters() if p.requires_grad)
    total = sum(parameter_count(p) for p in model.parameters())
    return trainable, total
