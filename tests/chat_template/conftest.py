"""Fixtures for the chat_template tests: the real tokenizers and official templates in ../shared/assets.

Every tokenizer is loaded once per session. Tests that need the assets skip, with the reason, when the shared
folder is absent (it sits next to the repository: <repo>/../shared).
"""
from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
TOKENIZER_DIR = SHARED / "assets" / "tokenizers"
OFFICIAL_DIR = SHARED / "assets" / "chat_templates"
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"  # official templates kept in the repo (golden/SOURCES.md)
SKIP_REASON = f"shared assets not found at {SHARED} (real tokenizers and official chat templates live there)"

if str(REPO) not in sys.path:  # `import chat_template` from any working directory
    sys.path.insert(0, str(REPO))

# Check strings from shared/assets/SOURCES.md: "Hello world! 你好，世界。" without special tokens.
CHECK_TEXT = "Hello world! 你好，世界。"
CHECK_IDS = {
    "qwen2.5": [9707, 1879, 0, 220, 108386, 3837, 99489, 1773],
    "yi": [25102, 1504, 99, 59568, 25902, 101, 2349, 102],
    "gemma": [4521, 2134, 235341, 30485, 235607, 235365, 9979, 235362],
    "phi-3": [15043, 3186, 29991, 29871, 30919, 31076, 30214, 30793, 30967, 30267],
    "deepseek-v3": [19923, 2058, 3, 223, 30594, 303, 3427, 320],
}
# The Yi tokenizer.json here is the base model's: "<|im_start|>" (6) and "<|im_end|>" (7) are in its vocabulary
# but not added tokens, so their text would be split into characters. Yi-Chat's tokenizer marks them special
# (SOURCES.md: Yi-Chat ChatML ids 6 / 7); they are made so here, at their existing ids.
CHAT_CONTROL_TOKENS = {"yi": {"<|im_start|>": 6, "<|im_end|>": 7}}
# yi and gemma ship no chat_template; the official one comes from chat_templates/ (SOURCES.md).
MISSING_CHAT_TEMPLATE = {"yi": "yi-chat.jinja", "gemma": "gemma-it.jinja"}


def load_tokenizer(folder):
    """The tokenizer loading rule (the project's utils.tokenizer.load_tokenizer follows the same rule).

    `AutoTokenizer.from_pretrained(folder)`, except when tokenizer_config.json names LlamaTokenizer[Fast] and a
    tokenizer.json exists: transformers 5 then rebuilds a SentencePiece-style pipeline from the class name (Yi
    gets a spurious leading "▁", DeepSeek-V3 wrong ids), so the fast tokenizer is built from tokenizer.json as is.
    """
    import transformers

    folder = Path(folder)
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    rebuilt = config.get("tokenizer_class") in ("LlamaTokenizer", "LlamaTokenizerFast")
    if rebuilt and (folder / "tokenizer.json").is_file():
        return transformers.PreTrainedTokenizerFast.from_pretrained(str(folder))
    return transformers.AutoTokenizer.from_pretrained(str(folder))


def official_template(file_name: str) -> str:
    path = GOLDEN_DIR / file_name if (GOLDEN_DIR / file_name).is_file() else OFFICIAL_DIR / file_name
    return path.read_text(encoding="utf-8")


# No Llama-3 tokenizer is available offline. "llama3-on-deepseek-v3" stands in: the DeepSeek-V3 tokenizer (byte-level
# BPE with a 128k vocabulary, like Llama-3's) with Llama-3's control tokens added as special tokens, as they are in
# Llama-3, so that "<|eot_id|>" is one token and the template's structure tokenizes the way it does for Llama-3.
LLAMA3_STAND_IN = "llama3-on-deepseek-v3"
LLAMA3_SPECIAL_TOKENS = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
                         "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}

# Our template -> (real tokenizer, official jinja, options for ours) used wherever one pairing per template is enough.
# Etude has no official template; plain ChatML without a default system (Yi-Chat's) is its reference text.
PRIMARY = {
    "qwen": ("qwen2.5", "qwen2.5-instruct.jinja",
             {"default_system": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."}),
    "qwen3": ("qwen2.5", "qwen3.jinja", {}),
    "yi": ("yi", "yi-chat.jinja", {}),
    "gemma": ("gemma", "gemma-it.jinja", {}),
    "gemma3": ("gemma", "google-gemma-3-it.jinja", {}),  # Gemma 2's tokenizer: same control tokens as Gemma 3's
    "phi3": ("phi-3", "phi-3.5-mini-instruct.jinja", {}),
    "deepseek": ("deepseek-v3", "deepseek-llm-chat.jinja", {}),
    "deepseek3": ("deepseek-v3", "deepseek-v3.jinja", {}),
    "llama3": (LLAMA3_STAND_IN, "llama-3-instruct.jinja", {}),
    "etude": ("qwen2.5", "yi-chat.jinja", {}),
}


class Tokenizers:
    """Loads each real tokenizer on first use, checks it against SOURCES.md, and keeps it for the session."""

    def __init__(self):
        self._cache = {}

    def __call__(self, name: str):
        if name not in self._cache:
            if not TOKENIZER_DIR.is_dir():
                pytest.skip(SKIP_REASON)
            if name == LLAMA3_STAND_IN:
                tok = load_tokenizer(TOKENIZER_DIR / "deepseek-v3")
                tok.add_special_tokens(LLAMA3_SPECIAL_TOKENS)
                tok.chat_template = official_template("llama-3-instruct.jinja")
                self._cache[name] = tok
                return tok
            tok = load_tokenizer(TOKENIZER_DIR / name)
            ids = tok(CHECK_TEXT, add_special_tokens=False)["input_ids"]
            assert ids == CHECK_IDS[name], f"{name}: check string encodes to {ids}, SOURCES.md says {CHECK_IDS[name]}"
            if name in CHAT_CONTROL_TOKENS:
                texts, want = list(CHAT_CONTROL_TOKENS[name]), list(CHAT_CONTROL_TOKENS[name].values())
                assert tok.convert_tokens_to_ids(texts) == want
                tok.add_special_tokens({"additional_special_tokens": texts})
                assert tok.convert_tokens_to_ids(texts) == want and len(tok) == len(tok.get_vocab())
            if not tok.chat_template and name in MISSING_CHAT_TEMPLATE:
                tok.chat_template = official_template(MISSING_CHAT_TEMPLATE[name])
            self._cache[name] = tok
        return self._cache[name]


@pytest.fixture(scope="session")
def shared_assets() -> Path:
    if not SHARED.is_dir():
        pytest.skip(SKIP_REASON)
    return SHARED / "assets"


@pytest.fixture(scope="session")
def tokenizers(shared_assets) -> Tokenizers:
    """`tokenizers("qwen2.5")` -> the real tokenizer, loaded once per session."""
    return Tokenizers()


@pytest.fixture(scope="session")
def official(shared_assets):
    """`official("qwen3.jinja")` -> the official chat template text."""
    return official_template


@pytest.fixture(scope="session")
def primary(shared_assets) -> dict:
    """PRIMARY: our template -> (tokenizer name, official jinja file, options for ours)."""
    return PRIMARY


@pytest.fixture(scope="session")
def template_tokenizer(tokenizers):
    """`template_tokenizer("gemma")` -> the real tokenizer that our template is tested on."""
    return lambda template_name: tokenizers(PRIMARY[template_name][0])


@pytest.fixture(scope="session")
def swapped():
    """`with swapped(tok, text):` gives a session tokenizer another chat_template for the block."""
    return chat_template_swapped


@contextmanager
def chat_template_swapped(tokenizer, chat_template):
    """Give a session tokenizer another chat_template for the duration of a block."""
    saved = tokenizer.chat_template
    tokenizer.chat_template = chat_template
    try:
        yield tokenizer
    finally:
        tokenizer.chat_template = saved
