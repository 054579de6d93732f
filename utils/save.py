"""Write the result of a run so plain transformers/peft load it and `generate` stops at the end of a turn."""
from __future__ import annotations

import hashlib
import json
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import GenerationConfig

import chat_template

ADAPTER_FILE = "adapter_model.safetensors"
FINGERPRINT_ROWS = 64  # rows of each tensor that enter a base's fingerprint


def build_generation_config(model, tokenizer, template_name: str) -> GenerationConfig:
    """The model's generation config with every stop token of the template as eos (Qwen: <|im_end|> and
    <|endoftext|>), so `generate` ends at the end of the assistant's turn."""
    base = getattr(model, "generation_config", None)
    config = GenerationConfig.from_dict(base.to_dict()) if base is not None else GenerationConfig()
    config.eos_token_id = chat_template.stop_token_ids(tokenizer, template_name)
    config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        config.bos_token_id = tokenizer.bos_token_id
    return config


def trainable_snapshot(model) -> dict[str, torch.Tensor]:
    """Copies of the trained tensors under the names they are saved with: the whole adapter (it is small), or for
    full fine-tuning the first and last trainable tensors, standing for all."""
    from peft import PeftModel, get_peft_model_state_dict
    if isinstance(model, PeftModel):
        named = list(get_peft_model_state_dict(model).items())
    else:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        named = named[:1] + named[-1:]
    return {n: p.detach().float().cpu().clone() for n, p in named}


def save_outputs(trainer, tokenizer, args, template_name: str) -> None:
    """Weights through the Trainer (it gathers them under DDP/FSDP/ZeRO-3 and writes on rank 0 only), then the
    files that make the folder self-describing: tokenizer with our chat template, generation config, run record."""
    config = getattr(trainer.model, "config", None)
    if getattr(config, "training_stage", None) is not None:  # Etude records its stage in config.json
        config.training_stage = "sft"
    trainer.save_model(args.output_dir)
    if not trainer.is_world_process_zero():
        return
    out = Path(args.output_dir)
    tokenizer.save_pretrained(out)
    build_generation_config(trainer.model, tokenizer, template_name).save_pretrained(out)
    with open(out / "dojo_run.json", "w", encoding="utf-8") as f:
        json.dump({"template_name": template_name, "template": chat_template.describe(tokenizer, template_name),
                   "train_mode": args.train_mode,
                   "base_model": args.model_name_or_path, "stage": args.stage,
                   "base_fingerprint": base_fingerprint(args.model_name_or_path)}, f, indent=2)


def base_fingerprint(model_path: str) -> dict | None:
    """The identity of a base model folder, which utils/merge_lora.py checks before merging an adapter into a base:
    sha256 over every tensor's name, shape and first FINGERPRINT_ROWS rows (floats as float32, so a bf16 base saved
    again in fp32 keeps its fingerprint), read by name from the folder's safetensors files. From the files, not the
    loaded model: the same for every train_mode (QLoRA's 4-bit copy is never hashed) and for the 16-bit base at
    merge time, and independent of how the weights are sharded. None without safetensors files (an Etude preset, a
    hub id, .bin weights): nothing to compare."""
    folder = Path(model_path)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    digest = hashlib.sha256()
    with ExitStack() as stack:
        handles = [stack.enter_context(safe_open(str(f), framework="pt")) for f in files]
        where = {name: h for h in handles for name in h.keys()}
        for name in sorted(where):
            part = where[name].get_slice(name)
            shape = part.get_shape()
            rows = part[:FINGERPRINT_ROWS] if shape else where[name].get_tensor(name)
            rows = rows.float() if rows.is_floating_point() else rows
            digest.update(f"{name}{shape}".encode())
            digest.update(rows.contiguous().numpy().tobytes())
    model_type = json.loads((folder / "config.json").read_text()).get("model_type") \
        if (folder / "config.json").is_file() else None
    return {"sha256": digest.hexdigest(), "tensors": len(where), "model_type": model_type}


def verify_outputs(args, snapshot: dict[str, torch.Tensor]) -> str:
    """Reload what was written and check it is non-empty, finite, and moved away from its initial values."""
    out = Path(args.output_dir)
    if args.train_mode == "full":
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
        auto = AutoModelForSequenceClassification if args.stage == "rm" else AutoModelForCausalLM  # a reward model
        reloaded = dict(auto.from_pretrained(out, dtype=torch.float32).named_parameters())
    else:
        reloaded = load_file(out / ADAPTER_FILE)
        missing = [name for name in snapshot if name not in reloaded]
        if missing:
            raise RuntimeError(f"saved adapter lacks {len(missing)} trained tensors, e.g. {missing[0]}")
    if not reloaded:
        raise RuntimeError(f"{out}: the saved weights are empty")
    changed = 0
    for name, before in snapshot.items():
        after = reloaded[name].detach().float().cpu()
        if not torch.isfinite(after).all():
            raise RuntimeError(f"saved tensor {name} holds NaN/inf")
        changed += not torch.equal(after, before)
    if changed == 0:
        raise RuntimeError("no trained tensor changed during training (learning rate 0? no supervised tokens?)")
    return f"verified {out}: {changed} of {len(snapshot)} trained tensors changed, all finite"


def plot_loss_curve(log_history: list[dict], path: Path) -> bool:
    """Write the train and eval loss curves; False (nothing written) when no loss was logged, as in a run shorter
    than logging_steps. Few points are drawn as markers, so a one-point curve is visible."""
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    if not train and not evals:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for points, label in ((train, "train"), (evals, "eval")):
        if points:
            ax.plot(*zip(*points), marker="." if len(points) < 50 else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (supervised tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
