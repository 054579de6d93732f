"""Guess a model's chat-template family, and say how the guess was made."""
from __future__ import annotations

import json
from pathlib import Path

from .registry import TEMPLATES


def _from_model_type(model_type: str | None):
    for t in TEMPLATES.values():
        if model_type and model_type in t.model_types:
            return t.name
    return None


def _from_chat_template(chat_template: str | None):
    if not chat_template:
        return None
    if "<|im_start|>" in chat_template:  # ChatML: Qwen3 thinks, Qwen has a default system, Yi has neither
        if "<think>" in chat_template:
            return "qwen3"
        return "qwen" if ("Qwen" in chat_template or "You are a helpful assistant" in chat_template) else "yi"
    for t in TEMPLATES.values():
        if t.name not in ("qwen", "qwen3", "yi") and t.detect_markers and all(
                m in chat_template for m in t.detect_markers):
            return t.name
    return None


def _from_vocab(tokenizer):
    vocab = tokenizer.get_vocab()
    if "<|im_start|>" in vocab:
        return "qwen" if "<|endoftext|>" in vocab and len(vocab) > 150000 else "yi"
    for name, token in (("gemma", "<start_of_turn>"), ("phi3", "<|assistant|>"), ("deepseek3", "<｜User｜>"),
                        ("llama3", "<|start_header_id|>")):
        if token in vocab:
            return name
    return None


def detect(model_path_or_tokenizer, tokenizer=None) -> tuple[str, str]:
    """Return (template_name, reason). Looks at config.json's model_type, then the chat template, then the vocab."""
    if isinstance(model_path_or_tokenizer, (str, Path)):
        config = Path(model_path_or_tokenizer) / "config.json"
        if config.is_file():
            model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
            if name := _from_model_type(model_type):
                return name, f"config.json model_type={model_type!r}"
        if tokenizer is None:
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(model_path_or_tokenizer)
    else:
        tokenizer = model_path_or_tokenizer
    if name := _from_chat_template(getattr(tokenizer, "chat_template", None)):
        return name, "markers in the tokenizer's chat_template"
    if name := _from_vocab(tokenizer):
        return name, "special tokens in the tokenizer's vocabulary"
    raise ValueError("could not detect the chat template family of this model; set template_name "
                     f"(one of: {', '.join(TEMPLATES)})")
