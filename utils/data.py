"""Read, validate and encode training data.

Three record shapes, detected per file from its first record:
  alpaca    {"instruction", "input"?, "output", "system"?, "history"?: [[q, a], ...]}   (LLM-Dojo's seed format)
  messages  {"messages": [{"role", "content"}, ...]}                                     (OpenAI)
  sharegpt  {"conversations": [{"from", "value"}, ...], "system"?}
Every record becomes an OpenAI-style message list. Records are validated here, line by line, so a bad record is
reported as file:line and field before anything is written; `datasets` then holds and maps the clean records.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import chat_template

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "function_call": "assistant", "observation": "tool", "tool": "tool"}
MESSAGE_ROLES = ("system", "user", "assistant", "tool")


class DataError(ValueError):
    """Malformed input, always naming file:line and the field."""


@dataclass
class Conversation:
    messages: list[dict]
    source: str  # "file:line" (JSONL) or "file:item N" (JSON array, parquet)


def _records(path: Path):
    """Yield (location, record) pairs with a location a person can open the file at."""
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{lineno}", json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{lineno}: invalid JSON: {err.msg} (column {err.colno})") from None
    elif path.suffix == ".json":
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: invalid JSON: {err.msg} (column {err.colno})") from None
        if not isinstance(items, list):
            raise DataError(f"{path}:1: a .json data file must hold a list of records")
        for i, item in enumerate(items):
            yield f"{path}:item {i}", item
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq
        for i, item in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}:row {i}", item
    else:
        raise DataError(f"{path}: unsupported data file type (use {', '.join(DATA_SUFFIXES)})")


def detect_format(record, where: str) -> str:
    if not isinstance(record, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    for fmt, key in (("messages", "messages"), ("sharegpt", "conversations"), ("alpaca", "instruction")):
        if key in record:
            return fmt
    raise DataError(f"{where}: unknown record shape with keys {sorted(record)}; expected 'instruction'+'output' "
                    "(alpaca), 'messages' (OpenAI) or 'conversations' (ShareGPT)")


def _text(record: dict, key: str, where: str, field: str, required=True, allow_empty=False) -> str | None:
    if key not in record or record[key] is None:
        if required:
            raise DataError(f"{where}: field '{field}' is missing")
        return None
    value = record[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{field}' must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(f"{where}: field '{field}' is empty")
    return value


def _from_alpaca(r: dict, where: str) -> list[dict]:
    instruction = _text(r, "instruction", where, "instruction")
    extra = _text(r, "input", where, "input", required=False, allow_empty=True)
    output = _text(r, "output", where, "output")
    system = _text(r, "system", where, "system", required=False, allow_empty=True)
    messages = [{"role": "system", "content": system}] if system else []
    for i, pair in enumerate(r.get("history") or []):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise DataError(f"{where}: field 'history[{i}]' must be a [question, answer] pair")
        q = _text({"q": pair[0]}, "q", where, f"history[{i}][0]")
        a = _text({"a": pair[1]}, "a", where, f"history[{i}][1]")
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    prompt = f"{instruction}\n{extra}" if extra and extra.strip() else instruction
    return messages + [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]


def _from_turns(turns, where: str, list_key: str, role_key: str, text_key: str, roles: dict) -> list[dict]:
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: field '{list_key}' must be a non-empty list")
    messages = []
    for i, turn in enumerate(turns):
        field = f"{list_key}[{i}]"
        if not isinstance(turn, dict):
            raise DataError(f"{where}: field '{field}' must be an object")
        role = turn.get(role_key)
        if role not in roles:
            raise DataError(f"{where}: field '{field}.{role_key}' has unknown role {role!r} "
                            f"(known: {', '.join(roles)})")
        # an assistant turn may be empty (it still teaches the end-of-turn token); nothing else may
        content = _text(turn, text_key, where, f"{field}.{text_key}", allow_empty=roles[role] == "assistant")
        message = {"role": roles[role], "content": content}
        reasoning = _text(turn, "reasoning_content", where, f"{field}.reasoning_content", required=False,
                          allow_empty=True)
        if reasoning is not None:
            message["reasoning_content"] = reasoning
        messages.append(message)
    return messages


def _check_order(messages: list[dict], where: str) -> None:
    """(system)? then user/assistant alternation (tool results answer an assistant), ending on the assistant."""
    body = messages[1:] if messages[0]["role"] == "system" else messages
    if not body or body[0]["role"] != "user":
        raise DataError(f"{where}: field 'role': the conversation must start with a user turn (after any system)")
    for prev, cur in zip(body, body[1:]):
        ok = {"user": ("assistant",), "assistant": ("user", "tool"), "tool": ("assistant", "tool")}
        if cur["role"] == "system" or cur["role"] not in ok[prev["role"]]:
            raise DataError(f"{where}: field 'role': broken alternation, {prev['role']!r} followed by "
                            f"{cur['role']!r}")
    if body[-1]["role"] != "assistant":
        raise DataError(f"{where}: field 'role': the last turn must be the assistant's (nothing to learn otherwise)")


def to_messages(record, where: str, fmt: str | None = None) -> list[dict]:
    fmt = fmt or detect_format(record, where)
    if fmt != detect_format(record, where):
        raise DataError(f"{where}: record shape differs from the file's first record ({fmt})")
    if fmt == "alpaca":
        messages = _from_alpaca(record, where)
    elif fmt == "messages":
        messages = _from_turns(record["messages"], where, "messages", "role", "content",
                               {r: r for r in MESSAGE_ROLES})
    else:
        messages = _from_turns(record["conversations"], where, "conversations", "from", "value", SHAREGPT_ROLES)
        system = _text(record, "system", where, "system", required=False, allow_empty=True)
        if system and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system})
    _check_order(messages, where)
    return messages


def data_files(paths: list[str]) -> list[Path]:
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix in DATA_SUFFIXES)
            if not found:
                raise DataError(f"{p}: folder holds no {', '.join(DATA_SUFFIXES)} files")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: no such data file or folder")
    return files


def load_conversations(paths, invalid_records: str = "error", skipped: list | None = None) -> list[Conversation]:
    """Every record of every file, validated and converted to messages.

    invalid_records="error" stops at the first bad record; "skip" drops bad records (not unreadable files) and
    appends their errors to `skipped`, for scraped data sets where a few broken records are expected."""
    if invalid_records not in ("error", "skip"):
        raise ValueError(f"invalid_records must be 'error' or 'skip', got {invalid_records!r}")
    conversations = []
    for path in data_files([paths] if isinstance(paths, (str, Path)) else paths):
        fmt = None
        for where, record in _records(path):
            try:
                fmt = fmt or detect_format(record, where)
                conversations.append(Conversation(to_messages(record, where, fmt), where))
            except DataError as err:
                if invalid_records == "error":
                    raise
                if skipped is not None:
                    skipped.append(str(err))
        if fmt is None:
            raise DataError(f"{path}: holds no valid records")
    return conversations


@dataclass
class EncodeSummary:
    total: int
    kept: int
    dropped_no_supervision: int
    max_len: int
    supervised_tokens: int
    tokens: int

    def __str__(self):
        text = (f"{self.kept} of {self.total} samples, {self.tokens} tokens, {self.supervised_tokens} supervised")
        if self.dropped_no_supervision:
            text += (f"; dropped {self.dropped_no_supervision} of {self.total}: no assistant tokens left after "
                     f"truncation to {self.max_len}")
        return text


def encode_conversations(conversations: list[Conversation], tokenizer, template_name: str, max_len: int,
                         train_on: str = "all", special_text: str = "error"):
    """A `datasets.Dataset` of input_ids/labels, and a summary. Samples left with no supervised token are dropped:
    an all-masked sample adds nothing but a loss of 0 that looks like success."""
    import datasets

    def encode_row(row):
        try:
            enc = chat_template.encode(json.loads(row["messages"]), tokenizer, template_name, max_len=max_len,
                                       train_on=train_on, special_text=special_text)
        except chat_template.ChatFormatError as err:
            raise DataError(f"{row['source']}: {err}") from None
        enc["n_supervised"] = sum(label != chat_template.IGNORE_INDEX for label in enc["labels"])
        return enc

    # messages travel as JSON text: Arrow would otherwise unify optional keys across records
    raw = datasets.Dataset.from_dict({"messages": [json.dumps(c.messages, ensure_ascii=False) for c in conversations],
                                      "source": [c.source for c in conversations]})
    encoded = raw.map(encode_row, remove_columns=["messages", "source"], desc="encode")
    kept = encoded.filter(lambda n: n > 0, input_columns="n_supervised", desc="drop unsupervised")
    summary = EncodeSummary(
        total=len(encoded), kept=len(kept), dropped_no_supervision=len(encoded) - len(kept), max_len=max_len,
        supervised_tokens=sum(kept["n_supervised"]), tokens=sum(map(len, kept["input_ids"])))
    if not len(kept):
        raise DataError(f"no usable samples: {summary}")
    return kept.remove_columns("n_supervised"), summary


def split_eval(dataset, eval_ratio: float, seed: int):
    if eval_ratio <= 0:
        return dataset, None
    parts = dataset.train_test_split(test_size=eval_ratio, seed=seed)
    return parts["train"], parts["test"]


def show_sample(input_ids, labels, tokenizer) -> str:
    """Decoded sample with the supervised spans wrapped in [[ ]], for the log before training."""
    out, run, supervised = [], [], False
    for tok, label in zip(input_ids, labels):
        is_sup = label != chat_template.IGNORE_INDEX
        if is_sup != supervised and run:
            text = tokenizer.decode(run)
            out.append(f"[[{text}]]" if supervised else text)
            run = []
        supervised = is_sup
        run.append(tok)
    if run:
        text = tokenizer.decode(run)
        out.append(f"[[{text}]]" if supervised else text)
    return "".join(out)


def build_datasets(args, tokenizer, template_name: str, log=print):
    """(train, eval or None, score conversations or None) for a run, with a summary and one marked sample logged."""
    encode = dict(tokenizer=tokenizer, template_name=template_name, max_len=args.max_len, train_on=args.train_on,
                  special_text=args.special_text)
    skipped = []
    read = dict(invalid_records=args.invalid_records, skipped=skipped)
    train_set, summary = encode_conversations(load_conversations(args.train_data_path, **read), **encode)
    log(f"train data: {summary}")
    if args.eval_data_path:
        eval_set, eval_summary = encode_conversations(load_conversations(args.eval_data_path, **read), **encode)
        log(f"eval data: {eval_summary}")
    else:
        train_set, eval_set = split_eval(train_set, args.eval_ratio, args.seed)
    score_set = None
    if args.score_data_path:
        score_set = load_conversations(args.score_data_path, **read)[:args.score_samples]
    if skipped:
        log(f"skipped {len(skipped)} invalid records (invalid_records=skip), e.g.:\n  " + "\n  ".join(skipped[:3]))
    log("sample 0, supervised tokens in [[ ]]:\n" + show_sample(train_set[0]["input_ids"], train_set[0]["labels"],
                                                                 tokenizer))
    return train_set, eval_set, score_set
