"""Load a tokenizer folder (or hub id) as its model's authors shipped it."""
from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerFast

# transformers 5 rebuilds a SentencePiece-style pipeline for folders whose tokenizer_class is LlamaTokenizer[Fast],
# which gives Yi a spurious leading "▁" (../shared/assets/SOURCES.md). Such folders that ship a tokenizer.json are
# read from that file as it is.
_REBUILT_CLASSES = ("LlamaTokenizer", "LlamaTokenizerFast")


def _tokenizer_class(path: Path) -> str | None:
    config = path / "tokenizer_config.json"
    if config.is_file():
        return json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class")
    return None


def load_tokenizer_folder(name_or_path: str, trust_remote_code: bool = False):
    path = Path(name_or_path)
    if path.is_dir() and (path / "tokenizer.json").is_file() and _tokenizer_class(path) in _REBUILT_CLASSES:
        return PreTrainedTokenizerFast.from_pretrained(name_or_path)
    return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
