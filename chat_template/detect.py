"""Guess a model's chat-template family, and say how the guess was made."""
from __future__ import annotations

import json
from pathlib import Path

from . import own
from .own import own_jinja
from .parity import matching_variant
from .registry import TEMPLATES


def _from_model_type(model_type: str | None):
    for t in TEMPLATES.values():
        if model_type and model_type in t.model_types:
            return t.name
    return None


def _from_markers(chat_template: str | None):
    """The family whose markers the template text carries (a guess, used only to order and to explain): of the
    families with a marker set found whole in the text, the one with the longest set, ties in table order (so a
    ChatML text with <think> is Qwen3's, one naming Qwen is Qwen's, a bare one Yi's)."""
    if not chat_template:
        return None
    found = [(len(markers), -order, t.name) for order, t in enumerate(TEMPLATES.values())
             for markers in t.detect_markers if all(m in chat_template for m in markers)]
    return max(found)[2] if found else None


def _candidates(guess):
    """Our families, the likeliest first. Etude's ChatML is this project's own: only an Etude model (model_type) is
    matched against it, never a model of another family (its text equals Yi-Chat's)."""
    names = [guess] + list(TEMPLATES) if guess else list(TEMPLATES)
    return [n for n in dict.fromkeys(names) if n != "etude" or n == guess]


def _from_chat_template(tokenizer, model_type: str | None) -> tuple[str, str]:
    """The family whose official variant renders every probe exactly like the model's template, else "own"."""
    jinja = own_jinja(tokenizer)
    guess = _from_model_type(model_type) or _from_markers(jinja)
    for name in _candidates(guess):
        options, _ = matching_variant(tokenizer, name, jinja)
        if options is not None:
            shown = "".join(f", {k}={v!r}" for k, v in options.items())
            return name, (f"the model's chat_template renders the probe conversations exactly as our {name!r} "
                          f"template (an official variant{shown})")
    why_not = ""
    if guess:
        why_not = f"; closest family {guess!r} differs: {matching_variant(tokenizer, guess, jinja)[1]}"
    try:
        analysis = own.analyze(tokenizer)
    except own.OwnTemplateError as err:
        raise ValueError(f"the model's chat_template is none of our families' official variants{why_not}, and it "
                         f"cannot be trained with as it is: {err}") from None
    return own.OWN, (f"the model's own chat_template, which is none of our families' official variants{why_not}; "
                     f"training with it as it is (assistant mask from {analysis.mask_method}, end of turn "
                     f"{analysis.end_of_turn.strip()!r})")


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
    """Return (template_name, reason). A model whose tokenizer has a chat_template keeps it: one of our families when
    the template is one of that family's official variants (every probe renders the same), else "own" (the template
    as it is, own.py). Without a chat_template (a base model): config.json's model_type, then the vocabulary."""
    model_type = None
    if isinstance(model_path_or_tokenizer, (str, Path)):
        config = Path(model_path_or_tokenizer) / "config.json"
        if config.is_file():
            model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
        if tokenizer is None:
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(model_path_or_tokenizer)
    else:
        tokenizer = model_path_or_tokenizer
    if own_jinja(tokenizer):
        return _from_chat_template(tokenizer, model_type)
    base = "the tokenizer has no chat_template (a base model?); "
    if name := _from_model_type(model_type):
        return name, base + f"config.json model_type={model_type!r} is the {name!r} family"
    if name := _from_vocab(tokenizer):
        return name, base + f"its vocabulary has the {name!r} family's special tokens"
    raise ValueError(base + "nor does its config or vocabulary name one of our families; set template_name "
                     f"(one of: {', '.join(TEMPLATES)})")
