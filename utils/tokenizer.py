"""Load a tokenizer that is right for training chat models."""
from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerFast

import chat_template
from chat_template import control_token_texts

# transformers 5 rebuilds a SentencePiece-style pipeline for folders whose tokenizer_class is LlamaTokenizer[Fast],
# which gives Yi a spurious leading "▁" (../shared/assets/SOURCES.md). Such folders that ship a tokenizer.json are
# read from that file as it is.
_REBUILT_CLASSES = ("LlamaTokenizer", "LlamaTokenizerFast")
PAD_TOKEN = "<|pad|>"


def _tokenizer_class(path: Path) -> str | None:
    config = path / "tokenizer_config.json"
    if config.is_file():
        return json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class")
    return None


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    import etude_model
    if name_or_path in etude_model.PRESETS:  # a preset starts from the GPT-2 BPE Etude tokenizer
        return etude_model.build_etude_tokenizer()
    path = Path(name_or_path)
    if path.is_dir() and (path / "tokenizer.json").is_file() and _tokenizer_class(path) in _REBUILT_CLASSES:
        return PreTrainedTokenizerFast.from_pretrained(name_or_path)
    return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)


def set_pad_token(tokenizer, template_name: str) -> None:
    """Give the tokenizer a pad token that is no stop token of the template.

    Labels here come from the template's spans, never from comparing ids with pad, so even pad == eos could not
    mask the end-of-turn token; a distinct pad keeps other tools (and attention masks built from ids) honest too.
    A new token may be added: build_model then grows the embeddings to len(tokenizer)."""
    stops = set(chat_template.stop_token_ids(tokenizer, template_name))
    if tokenizer.eos_token_id is not None:
        stops.add(tokenizer.eos_token_id)
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id not in stops:
        return
    vocab = tokenizer.get_vocab()
    # get_vocab() order comes from a hash map and changes between loads: sorting by id makes the pick (and the
    # saved pad_token_id) the same on every run
    pad_like = sorted((t for t in vocab if "pad" in t.lower() and t.startswith("<")), key=vocab.__getitem__)
    candidates = [tokenizer.unk_token] + pad_like
    for token in candidates:
        if token and token in vocab and vocab[token] not in stops:
            tokenizer.pad_token = token
            return
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})


def pick_template(args, tokenizer) -> tuple[str, str]:
    if args.template_name:
        chat_template.get_template(args.template_name)  # fails early on a typo
        return args.template_name, "set in the config"
    import etude_model
    if args.model_name_or_path in etude_model.PRESETS:
        return "etude", "Etude preset"
    return chat_template.detect(args.model_name_or_path, tokenizer)


def add_control_tokens(tokenizer, template_name: str) -> None:
    """Make the template's control tokens atomic special tokens. A base tokenizer (Yi's) may hold `<|im_start|>`
    in its vocabulary yet split the text into characters; registering it keeps its id (a token new to the
    vocabulary makes build_model grow the embeddings)."""
    special = set(control_token_texts(tokenizer))
    missing = [t for t in chat_template.get_template(template_name).special_tokens if t not in special]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)


def build_tokenizer(args):
    """(tokenizer, template_name, why that template). Tokens it adds make len(tokenizer) exceed the model's
    vocabulary; build_model grows the embeddings to match."""
    tokenizer = load_tokenizer(args.tokenizer_name_or_path or args.model_name_or_path, args.trust_remote_code)
    template_name, reason = pick_template(args, tokenizer)
    add_control_tokens(tokenizer, template_name)
    set_pad_token(tokenizer, template_name)
    tokenizer.padding_side = "right"
    chat_template.apply_to_tokenizer(tokenizer, template_name)
    return tokenizer, template_name, reason
