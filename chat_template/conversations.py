"""Read and validate chat data files (.jsonl, .json, .parquet) into conversations: OpenAI-style message lists.

Three record shapes, detected per file from its first record:
  alpaca    {"instruction", "input"?, "output", "system"?, "history"?: [[q, a], ...]}   (LLM-Dojo's seed format)
  messages  {"messages": [{"role", "content"}, ...]}                                     (OpenAI)
  sharegpt  {"conversations": [{"from", "value"}, ...], "system"?}
OpenAI and ShareGPT records may carry tool calling: a top-level "tools" list of function schemas (ShareGPT files
store it as JSON text), assistant "tool_calls" (ShareGPT: "function_call" turns holding the call as JSON text) and
tool results (role "tool"; ShareGPT: "observation"). Calls become {"type": "function", "function": {"name",
"arguments": object}} and schemas {"type": "function", "function": {...}}, the shapes serving stacks hand the
official templates.
Every record becomes an OpenAI-style message list. Records are validated here, line by line, so a bad record is
reported as file:line and field before anything is written (utils/data.py then encodes them for training).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

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
    tools: list[dict] | None = None  # function schemas the template writes into the prompt


def _parse_json(text: str, where: str, field: str | None = None):
    """json.loads with the error (bad syntax, or nesting too deep for Python's recursion limit) as a DataError."""
    what = f"field '{field}' is not valid JSON" if field else "invalid JSON"
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: {what}: {err.msg} (column {err.colno})") from None
    except RecursionError:
        raise DataError(f"{where}: {what}: nested too deeply") from None


def _not_utf8(where: str, why: str) -> DataError:
    return DataError(f"{where}: not UTF-8 text ({why}); data files must be UTF-8 (re-save it as UTF-8, e.g. "
                     "`iconv -f UTF-16 -t UTF-8`)")


def _decode(raw: bytes, where: str, first: bool) -> str:
    """A line as text. NUL bytes are valid UTF-8 but never occur in JSON text: UTF-16 (without a BOM) or binary."""
    try:
        text = raw.decode("utf-8-sig" if first else "utf-8")  # a BOM may open the file
    except UnicodeDecodeError as err:
        raise _not_utf8(where, f"{err.reason} at byte {err.start}") from None
    if "\0" in text:
        raise _not_utf8(where, "a NUL byte: UTF-16 or binary")
    return text


def _jsonl_records(path: Path):
    """Lines are decoded one by one, so an encoding error names its line; a bad JSON line is yielded as its
    DataError, so that invalid_records="skip" can drop it and read on."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            line = _decode(raw, where, first=lineno == 1)
            if not line.strip():
                continue
            try:
                record = _parse_json(line, where)
            except DataError as err:
                record = err
            yield where, record


def _records(path: Path):
    """Yield (location, record) pairs with a location a person can open the file at (record: a DataError for a
    line that is not JSON)."""
    if path.suffix == ".jsonl":
        yield from _jsonl_records(path)
    elif path.suffix == ".json":
        text = _decode(path.read_bytes(), str(path), first=True)
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: invalid JSON: {err.msg} (column {err.colno})") from None
        except RecursionError:
            raise DataError(f"{path}: invalid JSON: nested too deeply") from None
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


RECORD_SHAPES = (("messages", "messages"), ("sharegpt", "conversations"), ("alpaca", "instruction"))


def detect_format(record, where: str, shapes=RECORD_SHAPES, kind: str = "record",
                  expected: str = "'instruction'+'output' (alpaca), 'messages' (OpenAI) or 'conversations' "
                                  "(ShareGPT)") -> str:
    """The record's shape: the first (name, key) of `shapes` whose key it has."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    for fmt, key in shapes:
        if key in record:
            return fmt
    raise DataError(f"{where}: unknown {kind} shape with keys {sorted(record)}; expected {expected}")


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


def _json_value(value, where: str, field: str):
    """A field that holds JSON as a value or as JSON text (ShareGPT files keep tools and calls as text)."""
    return _parse_json(value, where, field) if isinstance(value, str) else value


def _tool_call(call, where: str, field: str) -> dict:
    """One call as {"type": "function", "function": {"name", "arguments": object}}. OpenAI's arguments are JSON
    text; serving stacks parse them before rendering (Qwen2.5's template writes `arguments | tojson`), so do we."""
    if not isinstance(call, dict):
        raise DataError(f"{where}: field '{field}' must be an object with 'name' and 'arguments'")
    if "function" in call:  # OpenAI nests the call; a bare {"name", "arguments"} is accepted too
        function, field = call["function"], f"{field}.function"
        if not isinstance(function, dict):
            raise DataError(f"{where}: field '{field}' must be an object with 'name' and 'arguments'")
    else:
        function = call
    name = _text(function, "name", where, f"{field}.name")
    if "arguments" not in function:
        raise DataError(f"{where}: field '{field}.arguments' is missing")
    arguments = _json_value(function["arguments"], where, f"{field}.arguments")
    if not isinstance(arguments, dict):
        raise DataError(f"{where}: field '{field}.arguments' must be a JSON object, got {type(arguments).__name__}")
    result = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if isinstance(call.get("id"), str):
        result["id"] = call["id"]
    return result


def _tool_calls(calls, where: str, field: str) -> list[dict]:
    if isinstance(calls, dict):  # a ShareGPT function_call holds one call, or a list of them
        return [_tool_call(calls, where, field)]
    if not isinstance(calls, list) or not calls:
        raise DataError(f"{where}: field '{field}' must be a non-empty list of tool calls")
    return [_tool_call(call, where, f"{field}[{i}]") for i, call in enumerate(calls)]


def _tools(record: dict, where: str) -> list[dict] | None:
    """The record's function schemas as {"type": "function", "function": {...}} (a bare schema gets wrapped)."""
    if record.get("tools") in (None, ""):
        return None
    tools = _json_value(record["tools"], where, "tools")
    if not isinstance(tools, list):
        raise DataError(f"{where}: field 'tools' must be a list of function schemas, got {type(tools).__name__}")
    wrapped = []
    for i, tool in enumerate(tools):
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise DataError(f"{where}: field 'tools[{i}]' must be a function schema with a 'name' (bare, or "
                            f"under 'function')")
        wrapped.append({"type": "function", **tool} if "function" in tool else {"type": "function", "function": tool})
    return wrapped or None


def _message(turn: dict, where: str, field: str, role: str, text_key: str, sharegpt_call: bool) -> dict:
    # A turn that only calls gets content "" (OpenAI writes null): transformers drops None-valued keys before
    # rendering, and Qwen3's official template fails on the missing key; Qwen2.5's renders "" and null alike.
    if sharegpt_call:  # ShareGPT "function_call": the value is the call itself, as JSON text
        text = _text(turn, text_key, where, f"{field}.{text_key}")
        return {"role": role, "content": "",
                "tool_calls": _tool_calls(_json_value(text, where, f"{field}.{text_key}"), where,
                                          f"{field}.{text_key}")}
    calls = turn.get("tool_calls")
    if calls is not None and role != "assistant":
        raise DataError(f"{where}: field '{field}.tool_calls': only assistant turns make tool calls")
    # an assistant turn may be empty (it still teaches the end-of-turn token), or null beside tool calls
    content = _text(turn, text_key, where, f"{field}.{text_key}", required=calls is None,
                    allow_empty=role == "assistant")
    message = {"role": role, "content": "" if content is None else content}
    if calls is not None:
        message["tool_calls"] = _tool_calls(calls, where, f"{field}.tool_calls")
    for key in ("reasoning_content",) + (("name", "tool_call_id") if role == "tool" else ()):
        value = _text(turn, key, where, f"{field}.{key}", required=False, allow_empty=True)
        if value is not None:
            message[key] = value
    return message


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
        messages.append(_message(turn, where, field, roles[role], text_key, sharegpt_call=role == "function_call"))
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
        if cur["role"] == "tool" and prev["role"] == "assistant" and not prev.get("tool_calls"):
            raise DataError(f"{where}: field 'role': a tool result must follow an assistant turn with tool calls")
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


def data_files(paths) -> list[Path]:
    """The data files named by a path or a list of paths (a folder: its data files, sorted)."""
    files = []
    for p in map(Path, [paths] if isinstance(paths, (str, Path)) else paths):
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


def read_records(paths, convert, invalid_records: str = "error", skipped: list | None = None) -> list:
    """Every record of every file through convert(record, where, fmt) -> (item, fmt), where fmt is the shape of the
    file's first valid record (None until then): a file holds one shape.

    invalid_records="error" stops at the first bad record; "skip" drops bad records (invalid JSON lines included;
    not unreadable files) and appends their errors to `skipped`, for scraped data sets where a few broken records
    are expected."""
    if invalid_records not in ("error", "skip"):
        raise ValueError(f"invalid_records must be 'error' or 'skip', got {invalid_records!r}")
    items = []
    for path in data_files(paths):
        fmt = None
        for where, record in _records(path):
            try:
                if isinstance(record, DataError):  # a line that is not JSON
                    raise record
                item, fmt = convert(record, where, fmt)
                items.append(item)
            except DataError as err:
                if invalid_records == "error":
                    raise
                if skipped is not None:
                    skipped.append(str(err))
        if fmt is None:
            raise DataError(f"{path}: holds no valid records")
    return items


def to_conversation(record, where: str, fmt: str | None) -> tuple[Conversation, str]:
    """One record as a Conversation, and its shape (fmt: the file's shape so far; None: detect it): read_records'
    converter for SFT records."""
    fmt = fmt or detect_format(record, where)
    return Conversation(to_messages(record, where, fmt), where, _tools(record, where)), fmt


def load_conversations(paths, invalid_records: str = "error", skipped: list | None = None) -> list[Conversation]:
    """Every record of every file, validated and converted to messages (read_records says what invalid_records
    does)."""
    return read_records(paths, to_conversation, invalid_records, skipped)
