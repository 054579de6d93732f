"""The Etude tokenizer: GPT-2's byte-level BPE plus chat tokens, as a real Hugging Face tokenizer.

Why rebuild GPT-2 BPE instead of calling tiktoken directly? The rest of the stack (Trainer,
TRL, chat templates, padding, offsets, save/load) expects a `PreTrainedTokenizerFast`. So we
read tiktoken's rank file (token bytes -> rank) and turn it into a `tokenizers` BPE model with
GPT-2's byte-level pre-tokenizer; the ids are identical to tiktoken's (a test checks it).

Ids: 0..50255 ordinary BPE tokens, then the special tokens
    50256 <|endoftext|>  (eos, also the document separator in pretraining)
    50257 <|im_start|>   50258 <|im_end|>   (chat turns, ChatML shape)
    50259 <|pad|>
len(tokenizer) == 50260; the model's embedding has 50304 rows (padded to a multiple of 64,
which makes the matmuls faster on GPUs).
"""

from __future__ import annotations

import os
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from chat_template import get_template

EOS_TOKEN, IM_START, IM_END, PAD_TOKEN = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"
SPECIAL_TOKENS = [EOS_TOKEN, IM_START, IM_END, PAD_TOKEN]

# The chat format is defined once, in chat_template/templates/etude.jinja (ChatML shape with {% generation %}
# markers); the tokenizer carries that definition so saved models render prompts the way they were trained.
CHAT_TEMPLATE = get_template("etude").jinja
assert set(get_template("etude").special_tokens) <= set(SPECIAL_TOKENS), "etude template tokens must be special"

# The folder of offline assets (tokenizers/, data/, ...; tests and device scripts set it too), and the rank file in it.
ASSETS_ENV = "DOJO_SHARED_ASSETS"
ASSETS_TIKTOKEN_FILE = Path("tokenizers") / "gpt2" / "gpt2.tiktoken"


def assets_tiktoken_file() -> Path | None:
    """$DOJO_SHARED_ASSETS/tokenizers/gpt2/gpt2.tiktoken, None when the variable is not set."""
    root = os.environ.get(ASSETS_ENV)
    return Path(root) / ASSETS_TIKTOKEN_FILE if root else None


def padded_vocab_size(n_tokens: int, multiple: int = 64) -> int:
    """Round the vocabulary up so the embedding/LM-head matmuls have GPU-friendly shapes."""
    return multiple * ((n_tokens + multiple - 1) // multiple)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters, so that
    byte-level tokens can be stored as strings in vocab/merges."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def load_gpt2_ranks(tiktoken_file: str | os.PathLike | None = None) -> dict[bytes, int]:
    """GPT-2 BPE ranks {token_bytes: id}. Order of preference: the given file, $ETUDE_TIKTOKEN_FILE,
    $DOJO_SHARED_ASSETS/tokenizers/gpt2/gpt2.tiktoken, and last tiktoken's r50k_base (downloads if online)."""
    from tiktoken.load import load_tiktoken_bpe

    candidates = [tiktoken_file, os.environ.get("ETUDE_TIKTOKEN_FILE"), assets_tiktoken_file()]
    for path in candidates:
        if path and Path(path).is_file():
            return load_tiktoken_bpe(str(path))
    if tiktoken_file:
        raise FileNotFoundError(f"tiktoken rank file not found: {tiktoken_file}")
    import tiktoken

    return dict(tiktoken.get_encoding("r50k_base")._mergeable_ranks)


def _gpt2_backend(ranks: dict[bytes, int]) -> Tokenizer:
    """tiktoken ranks -> `tokenizers` BPE. tiktoken merges the adjacent pair whose concatenation has
    the lowest rank; we list, for every token in rank order, each split into two known tokens as a
    merge, which gives the HF BPE the same priorities. `ignore_merges` takes a whole pre-token
    straight from the vocab when it is there, as tiktoken does."""
    b2u = _bytes_to_unicode()

    def as_str(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    vocab = {as_str(tok): rank for tok, rank in ranks.items()}
    merges = []
    for tok, _ in sorted(ranks.items(), key=lambda kv: kv[1]):
        for i in range(1, len(tok)):
            left, right = tok[:i], tok[i:]
            if left in ranks and right in ranks:
                merges.append((as_str(left), as_str(right)))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, ignore_merges=True))
    # GPT-2's regex split ('s|'t|...| ?\p{L}+| ?\p{N}+|...) then bytes -> printable chars.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return backend


def wrap_tokenizer(backend: Tokenizer, model_max_length: int = 1024) -> PreTrainedTokenizerFast:
    """Add the Etude special tokens (appended after the existing vocabulary, in SPECIAL_TOKENS order,
    unless already present) and wrap as a transformers tokenizer with the chat template."""
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
        extra_special_tokens=[IM_START, IM_END], chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length, clean_up_tokenization_spaces=False)


def build_etude_tokenizer(tiktoken_file: str | os.PathLike | None = None) -> PreTrainedTokenizerFast:
    """The Etude tokenizer from the GPT-2 (r50k_base) rank file. See the module docstring for ids."""
    tok = wrap_tokenizer(_gpt2_backend(load_gpt2_ranks(tiktoken_file)))
    expected = {EOS_TOKEN: 50256, IM_START: 50257, IM_END: 50258, PAD_TOKEN: 50259}
    actual = {t: tok.convert_tokens_to_ids(t) for t in expected}
    if actual != expected:  # e.g. a rank file that is not GPT-2's
        raise ValueError(f"Unexpected special token ids {actual}; expected {expected}")
    return tok


def load_etude_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved with `save_pretrained` (a checkpoint dir or a train_tokenizer output)."""
    return PreTrainedTokenizerFast.from_pretrained(str(path))


def check_vocab(model_config, tokenizer) -> None:
    """Fail early and clearly when a tokenizer emits ids the model has no embedding row for
    (otherwise: an opaque CUDA device-side assert, or an IndexError deep inside nn.Embedding)."""
    n_tok, n_model = len(tokenizer), model_config.vocab_size
    if n_tok > n_model:
        raise ValueError(
            f"Tokenizer/model vocabulary mismatch: the tokenizer has {n_tok} tokens but the model's "
            f"vocab_size is {n_model}. Use the tokenizer the checkpoint was trained with, or build the "
            f"model with vocab_size >= {n_tok} (e.g. {padded_vocab_size(n_tok)}).")
