"""Shared fixtures: the ../shared assets, tiny random models of each family paired with its real tokenizer."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import utils.tiny_model as tiny_model_module
from utils.memory import prefer_expandable_segments
from utils.tiny_model import ARCHITECTURES

REPO = Path(__file__).resolve().parent.parent
# DOJO_SHARED_ASSETS: another place for the same assets (the GPU machine, where ../shared does not travel)
SHARED = Path(os.environ.get("DOJO_SHARED_ASSETS", REPO.parent / "shared" / "assets"))
os.environ.setdefault("DOJO_SHARED_ASSETS", str(SHARED))  # where the code looks for them (etude_model/tokenizer.py)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
prefer_expandable_segments()  # GPU tests run with the CUDA allocator a training run gets (main_train.py)


def shared_path(*parts) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: these tests need the ../shared assets beside the checkout")
    return path


# family -> (tokenizer folder under ../shared/assets/tokenizers, template, transformers config builder)
FAMILIES = {family: (tok_dir, template, ARCHITECTURES[family]) for family, tok_dir, template in (
    ("qwen", "qwen2.5", "qwen"), ("yi", "yi", "yi"), ("gemma", "gemma", "gemma"), ("phi3", "phi-3", "phi3"),
    ("deepseek", "deepseek-v3", "deepseek"))}


def build_tiny_model(family: str, folder: Path, seed: int = 0) -> Path:
    """A 1-layer, 16-wide random model of the family's architecture, saved with the family's real tokenizer."""
    return tiny_model_module.build_tiny_model(family, shared_path("tokenizers", FAMILIES[family][0]), folder, seed)


def tiny_qwen2(layers: int = 2):
    """A 2-layer (or `layers`), 32-wide random Qwen2 in fp32 (seed 0, sdpa attention, no KV cache): for layer-level
    tests."""
    import torch
    import transformers
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, attn_implementation="sdpa", pad_token_id=0)
    config.use_cache = False
    return transformers.Qwen2ForCausalLM(config).float()


def packed_batch(seed: int = 0, lengths=(7, 19, 12)) -> dict:
    """Random samples for tiny_qwen2 (ids below 128, the first third of each masked), packed into one padding-free
    row."""
    import torch

    from utils.collators import PaddingFreeCollator
    g = torch.Generator().manual_seed(seed)
    feats = []
    for n in lengths:
        ids = torch.randint(3, 128, (n,), generator=g).tolist()
        feats.append({"input_ids": ids, "labels": [-100] * (n // 3) + ids[n // 3:]})
    return PaddingFreeCollator()(feats)


def loss_and_grads(model, batch, seed: int = 0):
    """One forward + backward: the loss and every gradient, by parameter name. seed: the dropout masks."""
    import torch
    model.zero_grad()
    torch.manual_seed(seed)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    cache = {}

    def get(family: str) -> Path:
        if family not in cache:
            cache[family] = build_tiny_model(family, tmp_path_factory.mktemp(f"tiny_{family}"))
        return cache[family]
    return get


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


TOY_RECORDS = [
    {"instruction": "Say hello.", "output": "Hello!"},
    {"instruction": "What is 2+2?", "output": "4"},
    {"instruction": "Name a color.", "input": "Not red.", "output": "Blue."},
    {"instruction": "Translate to French: cat", "output": "chat"},
    {"instruction": "用中文问好", "output": "你好！"},
    {"instruction": "Count to three.", "output": "1, 2, 3"},
    {"instruction": "Opposite of up?", "output": "Down."},
    {"instruction": "Capital of France?", "output": "Paris."},
]


@pytest.fixture
def toy_data(tmp_path) -> Path:
    return write_jsonl(tmp_path / "toy.jsonl", TOY_RECORDS)


def train_argv(model_dir, data, out, *extra) -> list[str]:
    """Command line for a fast CPU run; extra flags override."""
    return ["--model_name_or_path", str(model_dir), "--train_data_path", str(data), "--output_dir", str(out),
            "--max_steps", "4", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
            "--learning_rate", "0.01", "--warmup_steps", "0", "--lr_scheduler_type", "constant",
            "--logging_steps", "1", "--save_steps", "1000", "--max_len", "64", "--report_to", "none",
            "--disable_tqdm", "true", "--dataloader_num_workers", "0", "--lora_dropout", "0", "--train_mode", "lora",
            *extra]


def final_loss(trainer) -> float:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h][-1]


def trainable_params(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct as an HF folder (tests/real_models.py); skipped when its PyPI package is absent."""
    from tests.real_models import smollm2_folder
    return smollm2_folder()
