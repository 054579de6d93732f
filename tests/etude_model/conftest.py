"""Shared fixtures for the Etude tests. Everything runs on CPU in fp32 and stays small:
the models are 2-layer, 64-wide versions of the presets."""

import random
from pathlib import Path

import pytest
import torch

# The test machine's cores are shared: one thread avoids oversubscription stalls.
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED = REPO_ROOT / ".." / "shared"
GPT2_TIKTOKEN = (SHARED / "assets" / "tokenizers" / "gpt2" / "gpt2.tiktoken").resolve()

SKIP_NO_SHARED = f"needs the offline GPT-2 BPE ranks at {GPT2_TIKTOKEN} (the ../shared assets folder is absent)"

TINY_DIMS = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                 vocab_size=320, eos_token_id=0, pad_token_id=3)


def tiny_config(preset: str, **overrides):
    """A preset's recipe at test size (the architecture switches stay as in the preset)."""
    from etude_model import make_config

    dims = dict(TINY_DIMS)
    dims["num_key_value_heads"] = 4 if preset == "etude-v0.1" else 2  # v0.1 is plain multi-head attention
    if "moe" in preset:
        dims["moe_intermediate_size"] = 32
    return make_config(preset, **{**dims, **overrides})


def synthetic_corpus(n_paragraphs: int = 400, seed: int = 0) -> str:
    """Repetitive English + Chinese text: learnable in a few steps, no download needed."""
    rng = random.Random(seed)
    sentences = ["The cat sat on the mat.", "A dog barked at the moon.", "We train small models on CPUs.",
                 "Tokens flow through the layers.", "春眠不觉晓，处处闻啼鸟。", "夜来风雨声，花落知多少。",
                 "Hello world! 你好，世界。", "Learning rates warm up, then decay."]
    paragraphs = [" ".join(rng.choice(sentences) for _ in range(rng.randint(2, 6))) for _ in range(n_paragraphs)]
    return "\n\n".join(paragraphs) + "\n"


@pytest.fixture(scope="session")
def make_tiny_config():
    """Fixtures rather than imports, so the tests work under any pytest import mode."""
    return tiny_config


@pytest.fixture(scope="session")
def gpt2_tiktoken_path() -> Path:
    if not GPT2_TIKTOKEN.is_file():
        pytest.skip(SKIP_NO_SHARED)
    return GPT2_TIKTOKEN


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(synthetic_corpus(), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def small_tokenizer_dir(tmp_path_factory, corpus_file) -> Path:
    """A 400-token byte-level BPE trained with etude_model.train_tokenizer (its CLI entry point)."""
    from etude_model.train_tokenizer import main

    out = tmp_path_factory.mktemp("tok")
    main(["--data", str(corpus_file), "--vocab_size", "400", "--output_dir", str(out)])
    return out


@pytest.fixture(scope="session")
def gpt2_tokenizer(gpt2_tiktoken_path):
    from etude_model import build_etude_tokenizer

    return build_etude_tokenizer(gpt2_tiktoken_path)
