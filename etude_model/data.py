"""Pretraining data: raw files -> one long token stream on disk -> fixed-length training windows.

1. `iter_documents` reads .txt and .jsonl files (or folders of them).
   - .txt: one document per paragraph, i.e. text separated by one or more blank lines
     (`text_split="paragraph"`, the default), or one document per non-empty line
     (`text_split="line"`, for files like wiki dumps with one article per line).
   - .jsonl: one document per line, taken from its "text" field.
2. `build_token_cache` tokenizes every document once, appends <|endoftext|> after each one and
   writes all ids to a flat binary file (uint16 when the vocab fits, else uint32) plus a small
   meta json. The file name is a hash of the file contents, the tokenizer and the split rule,
   so a rerun (or a resume) memory-maps the same file instead of tokenizing again.
3. `PackedWindows` cuts the stream into non-overlapping windows of block_size + 1 tokens
   (x = window[:-1], y = window[1:]), so documents are packed end to end with EOS between them
   and no token is wasted on padding. Windows are visited in a seeded random order per epoch;
   the (epoch, cursor) pair is the exact data position saved in checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import torch

DATA_SUFFIXES = (".txt", ".jsonl")


def list_data_files(paths: list[str | os.PathLike]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in DATA_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"No such data file or folder: {p}")
    if not files:
        raise ValueError(f"No .txt or .jsonl files found in {paths}")
    return files


def iter_documents(files: list[Path], text_split: str = "paragraph"):
    """Yield one string per document (see the module docstring for the rules)."""
    if text_split not in ("paragraph", "line"):
        raise ValueError("text_split must be 'paragraph' or 'line'")
    for f in files:
        if f.suffix == ".jsonl":
            with open(f, encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            text = json.loads(line)["text"]
                        except (json.JSONDecodeError, KeyError, TypeError) as e:
                            raise ValueError(f'{f}:{lineno}: expected a JSON object with a "text" field') from e
                        if text.strip():
                            yield text
        else:
            text = f.read_text(encoding="utf-8").replace("\r\n", "\n")
            parts = re.split(r"\n\s*\n", text) if text_split == "paragraph" else text.split("\n")
            yield from (p.strip() for p in parts if p.strip())


def _fingerprint(files: list[Path], tokenizer, text_split: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    h.update(tokenizer.backend_tokenizer.to_str().encode())
    h.update(text_split.encode())
    return h.hexdigest()


def build_token_cache(paths, tokenizer, cache_dir, text_split: str = "paragraph", batch_docs: int = 512,
                      log=print) -> tuple[np.memmap, dict]:
    """Tokenize the corpus once into `cache_dir/<hash>.bin` (+ `.json`); return (memmap, meta)."""
    files = list_data_files(paths)
    key = _fingerprint(files, tokenizer, text_split)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    bin_path, meta_path = cache_dir / f"{key}.bin", cache_dir / f"{key}.json"
    if not meta_path.exists():  # the meta json is written last, so it marks a complete cache
        dtype = np.uint16 if len(tokenizer) <= 65536 else np.uint32
        eos, n_docs, n_tokens = tokenizer.eos_token_id, 0, 0
        tmp = bin_path.with_suffix(f".bin.tmp{os.getpid()}")
        log(f"Tokenizing {len(files)} file(s) into {bin_path} ...")
        with open(tmp, "wb") as out:
            docs = iter_documents(files, text_split)
            while batch := [d for _, d in zip(range(batch_docs), docs)]:
                # split_special_tokens: a literal "<|endoftext|>" in raw text is just text, not EOS
                ids = tokenizer(batch, add_special_tokens=False, split_special_tokens=True,
                                verbose=False)["input_ids"]  # no "longer than model_max_length" warning
                flat = np.concatenate([np.array(doc + [eos], dtype=dtype) for doc in ids])
                out.write(flat.tobytes())
                n_docs, n_tokens = n_docs + len(batch), n_tokens + len(flat)
        os.replace(tmp, bin_path)
        meta = {"num_tokens": n_tokens, "num_documents": n_docs, "dtype": np.dtype(dtype).name,
                "files": [str(f) for f in files], "text_split": text_split, "eos_token_id": eos,
                "tokenizer_size": len(tokenizer)}
        tmp_meta = meta_path.with_suffix(f".json.tmp{os.getpid()}")
        tmp_meta.write_text(json.dumps(meta, indent=1))
        os.replace(tmp_meta, meta_path)
    meta = json.loads(meta_path.read_text())
    if meta["num_tokens"] == 0:
        raise ValueError(f"The corpus {paths} produced no tokens")
    tokens = np.memmap(bin_path, dtype=np.dtype(meta["dtype"]), mode="r", shape=(meta["num_tokens"],))
    return tokens, meta


def split_train_val(tokens: np.ndarray, val_fraction: float, block_size: int):
    """Hold out the last `val_fraction` of the stream (at least one window) for validation."""
    n_val = max(int(len(tokens) * val_fraction), block_size + 1) if val_fraction > 0 else 0
    if len(tokens) - n_val < block_size + 1:
        raise ValueError(f"Corpus too small: {len(tokens)} tokens cannot give a training window of "
                         f"{block_size + 1} tokens plus {n_val} validation tokens. Add data or lower --block_size.")
    return tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val:]


class PackedWindows:
    """Batches of (x, y) windows over a token stream, in a reproducible, resumable order."""

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int = 0, shuffle: bool = True):
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.seed, self.shuffle = seed, shuffle
        self.n_windows = (len(tokens) - 1) // block_size
        if self.n_windows < 1:
            raise ValueError(f"{len(tokens)} tokens are fewer than one window of {block_size + 1}")
        self.epoch, self.cursor, self._order_epoch, self._order = 0, 0, None, None

    def _window_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            n = self.n_windows
            self._order = (np.random.default_rng(self.seed + self.epoch).permutation(n) if self.shuffle
                           else np.arange(n))
            self._order_epoch = self.epoch
        return self._order

    def window(self, i: int) -> np.ndarray:
        start = i * self.block_size
        return np.asarray(self.tokens[start: start + self.block_size + 1], dtype=np.int64)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        for _ in range(self.batch_size):
            rows.append(self.window(int(self._window_order()[self.cursor])))
            self.cursor += 1
            if self.cursor == self.n_windows:  # epoch done: new shuffle
                self.epoch, self.cursor = self.epoch + 1, 0
        batch = torch.from_numpy(np.stack(rows))
        return batch[:, :-1], batch[:, 1:]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "n_windows": self.n_windows}

    def load_state_dict(self, state: dict) -> None:
        if state["n_windows"] != self.n_windows or state["seed"] != self.seed:
            raise ValueError("The data (or --block_size / --seed) changed since the checkpoint; cannot resume exactly")
        self.epoch, self.cursor = state["epoch"], state["cursor"]
