"""Read, validate and encode preference data: pairs (DPO, ORPO, SimPO, CPO, reward models) and unpaired KTO answers.

Pair shapes, detected per file from its first record:
  sharegpt  {"conversations": [prompt turns], "chosen": {"from", "value"}, "rejected": {...}, "system"?}
  trl       {"prompt": str | [{"role", "content"}], "chosen": str | [message], "rejected": str | [message]}
  alpaca    {"instruction", "input"?, "chosen", "rejected", "system"?, "history"?}
Unpaired (stage kto): any SFT record of chat_template/conversations.py (its last assistant turn is the answer), or trl's
{"prompt", "completion"}, plus "label": true (desirable) / false.

Each side is rendered whole (prompt + its answer) by chat_template.encode, so the tokens are exactly the official
template's, and its labels are the final assistant turn: the answer and its end-of-turn token(s), as in SFT. The
prompt is the tokens before the first supervised one; a pair whose chosen and rejected renderings disagree there is
dropped and counted, as is one that max_len leaves without an answer token on either side.
"""
from __future__ import annotations

from dataclasses import dataclass

import chat_template
from chat_template.conversations import (MESSAGE_ROLES, SHAREGPT_ROLES, Conversation, DataError, _check_order,
                                        _from_alpaca, _from_turns, _text, detect_format, read_records,
                                        to_conversation, to_messages)
from utils.data import build_score_set, show_sample, split_eval

IGNORE = chat_template.IGNORE_INDEX
PAIR_SHAPES = "'conversations'+'chosen'+'rejected' (ShareGPT), 'prompt'+'chosen'+'rejected' (trl) or " \
              "'instruction'+'chosen'+'rejected' (alpaca)"
PAIR_KEYS = (("sharegpt", "conversations"), ("trl", "prompt"), ("alpaca", "instruction"))


@dataclass
class Example:
    """One pair (chosen and rejected), or one unpaired answer (chosen only, with its KTO label)."""
    prompt: list[dict]
    chosen: dict
    rejected: dict | None
    label: bool | None
    source: str


def detect_pair_format(record, where: str) -> str:
    return detect_format(record, where, PAIR_KEYS, "preference record", PAIR_SHAPES)


def _answer(value, where: str, field: str, fmt: str) -> dict:
    """One assistant answer: a string (trl, alpaca), a {from, value} turn (ShareGPT) or a one-message list."""
    if isinstance(value, list) and len(value) == 1:
        value, field = value[0], f"{field}[0]"
    if isinstance(value, str) and fmt in ("trl", "alpaca"):
        value = {"role": "assistant", "content": value}
    role_key, text_key, roles = (("from", "value", SHAREGPT_ROLES) if fmt == "sharegpt"
                                 else ("role", "content", {r: r for r in MESSAGE_ROLES}))
    if not isinstance(value, dict):
        raise DataError(f"{where}: field '{field}' must be one assistant turn ({{{role_key}, {text_key}}}"
                        f"{' or a string' if fmt != 'sharegpt' else ''})")
    if roles.get(value.get(role_key)) != "assistant":
        raise DataError(f"{where}: field '{field}.{role_key}' must be an assistant role, got {value.get(role_key)!r}")
    return {"role": "assistant", "content": _text(value, text_key, where, f"{field}.{text_key}")}


def _prompt(record: dict, where: str, fmt: str) -> list[dict]:
    if fmt == "sharegpt":
        messages = _from_turns(record["conversations"], where, "conversations", "from", "value", SHAREGPT_ROLES)
        system = _text(record, "system", where, "system", required=False, allow_empty=True)
        if system and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system})
        return messages
    if fmt == "alpaca":  # utils/data.py's alpaca reading, with a placeholder answer that is cut off again
        return _from_alpaca({**record, "output": "-"}, where)[:-1]
    prompt = record["prompt"]
    if isinstance(prompt, str):
        return [{"role": "user", "content": _text(record, "prompt", where, "prompt")}]
    return _from_turns(prompt, where, "prompt", "role", "content", {r: r for r in MESSAGE_ROLES})


def to_pair(record, where: str, fmt: str) -> Example:
    if detect_pair_format(record, where) != fmt:
        raise DataError(f"{where}: record shape differs from the file's first record ({fmt})")
    for side in ("chosen", "rejected"):
        if record.get(side) is None:
            raise DataError(f"{where}: field '{side}' is missing")
    prompt = _prompt(record, where, fmt)
    chosen, rejected = (_answer(record[s], where, s, fmt) for s in ("chosen", "rejected"))
    _check_order(prompt + [chosen], where)  # (system)? user ... user: the answer ends the conversation
    if chosen["content"] == rejected["content"]:
        raise DataError(f"{where}: field 'rejected' is the same text as 'chosen' (nothing to prefer)")
    return Example(prompt, chosen, rejected, None, where)


def to_unpaired(record, where: str, fmt: str) -> Example:
    """A KTO record: an SFT record or trl's prompt/completion, with a boolean label."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    if not isinstance(record.get("label"), bool):
        raise DataError(f"{where}: field 'label' must be true (desirable) or false (undesirable), got "
                        f"{record.get('label')!r}")
    if fmt == "trl":
        if "completion" not in record:
            raise DataError(f"{where}: field 'completion' is missing")
        prompt, answer = _prompt(record, where, "trl"), _answer(record["completion"], where, "completion", "trl")
        _check_order(prompt + [answer], where)
        return Example(prompt, answer, None, record["label"], where)
    messages = to_messages({k: v for k, v in record.items() if k != "label"}, where, fmt)
    return Example(messages[:-1], messages[-1], None, record["label"], where)


def load_examples(paths, paired: bool, invalid_records: str = "error", skipped: list | None = None) -> list[Example]:
    """Every record of every file, validated (file:line and field on error, or skipped and listed)."""
    def convert(record, where, fmt):
        if paired:
            fmt = fmt or detect_pair_format(record, where)
            return to_pair(record, where, fmt), fmt
        fmt = fmt or ("trl" if isinstance(record, dict) and "prompt" in record else detect_format(record, where))
        return to_unpaired(record, where, fmt), fmt
    return read_records(paths, convert, invalid_records, skipped)


def load_score_conversations(paths, invalid_records: str = "error", skipped: list | None = None) -> list[Conversation]:
    """Held-out prompts for exact match (score_data_path) in a preference run: a file of pairs gives each prompt with
    its chosen answer as the reference (does the model now give the preferred answer?); a file of SFT records gives
    each conversation's last assistant turn (does it keep what SFT taught?). A file's first valid record decides
    which it holds ('chosen' marks a pair), in one pass over the file."""
    def as_conversation(record, where, fmt):
        kind, shape = fmt or ("pair" if isinstance(record, dict) and "chosen" in record else "sft", None)
        if kind == "sft":
            conversation, shape = to_conversation(record, where, shape)
            return conversation, (kind, shape)
        shape = shape or detect_pair_format(record, where)
        pair = to_pair(record, where, shape)
        return Conversation(pair.prompt + [pair.chosen], where), (kind, shape)

    return read_records(paths, as_conversation, invalid_records, skipped)


def encode_answer(prompt, answer, tokenizer, template_name: str, special_text: str) -> tuple[list, list]:
    """(prompt ids, answer ids) of prompt + answer rendered whole. The answer ids are the supervised span: the answer
    and its end of turn, without what the template writes after it (Qwen's newline), which carries no loss."""
    try:
        enc = chat_template.encode(prompt + [answer], tokenizer, template_name, train_on="last",
                                   special_text=special_text)
    except chat_template.ChatFormatError as err:
        raise DataError(str(err)) from None
    ids, labels = enc["input_ids"], enc["labels"]
    supervised = [i for i, label in enumerate(labels) if label != IGNORE]
    start, end = supervised[0], supervised[-1] + 1
    if len(supervised) != end - start:  # trl's collators supervise everything after the prompt
        raise DataError(f"template {template_name!r} leaves a gap in the supervised answer span")
    return ids[:start], ids[start:end]


@dataclass
class PreferenceSummary:
    total: int
    kept: int = 0
    dropped_prompt_mismatch: int = 0
    dropped_truncated: int = 0
    tokens: int = 0
    max_len: int = 0

    def __str__(self):
        text = f"{self.kept} of {self.total} samples, {self.tokens} tokens"
        if self.dropped_prompt_mismatch:
            text += (f"; dropped {self.dropped_prompt_mismatch}: the prompt renders differently before the chosen "
                     f"and the rejected answer")
        if self.dropped_truncated:
            text += f"; dropped {self.dropped_truncated}: no answer token left after truncation to {self.max_len}"
        return text


def encode_example(example: Example, tokenizer, template_name: str, max_len: int, special_text: str,
                   whole: bool = False) -> dict | str:
    """A row in trl's tokenized form (prompt_ids, chosen_ids, rejected_ids; or prompt_ids, completion_ids, label),
    or the reason it is dropped: "prompt_mismatch" or "truncated". Each side is cut to max_len tokens in all.
    whole: drop rather than cut a side longer than max_len (a reward model scores the last token)."""
    answers = [example.chosen] if example.rejected is None else [example.chosen, example.rejected]
    try:
        encoded = [encode_answer(example.prompt, a, tokenizer, template_name, special_text) for a in answers]
    except DataError as err:
        raise DataError(f"{example.source}: {err}") from None
    prompt_ids = encoded[0][0]
    if any(p != prompt_ids for p, _ in encoded):
        return "prompt_mismatch"
    if len(prompt_ids) >= max_len or (whole and any(len(prompt_ids) + len(a) > max_len for _, a in encoded)):
        return "truncated"
    answer_ids = [a[:max_len - len(prompt_ids)] for _, a in encoded]
    if example.rejected is None:
        return {"prompt_ids": prompt_ids, "completion_ids": answer_ids[0], "label": example.label}
    return {"prompt_ids": prompt_ids, "chosen_ids": answer_ids[0], "rejected_ids": answer_ids[1]}


def encode_examples(examples: list[Example], tokenizer, template_name: str, max_len: int,
                    special_text: str = "error", whole: bool = False):
    """A `datasets.Dataset` of encoded rows, and a summary of what was kept and dropped."""
    import datasets
    rows, summary = [], PreferenceSummary(total=len(examples), max_len=max_len)
    for example in examples:
        row = encode_example(example, tokenizer, template_name, max_len, special_text, whole)
        if row == "truncated":
            summary.dropped_truncated += 1
        elif row == "prompt_mismatch":
            summary.dropped_prompt_mismatch += 1
        else:
            rows.append(row)
            answers = [v for k, v in row.items() if k in ("chosen_ids", "rejected_ids", "completion_ids")]
            summary.tokens += sum(len(row["prompt_ids"]) + len(a) for a in answers)
    summary.kept = len(rows)
    if not rows:
        raise DataError(f"no usable samples: {summary}")
    return datasets.Dataset.from_list(rows), summary


def build_preference_datasets(args, tokenizer, template_name: str, log=print):
    """(train, eval or None, score conversations or None) for a preference run, with a summary and one marked pair
    logged."""
    paired, skipped = args.stage != "kto", []
    read = dict(paired=paired, invalid_records=args.invalid_records, skipped=skipped)
    encode = dict(tokenizer=tokenizer, template_name=template_name, max_len=args.max_len,
                  special_text=args.special_text, whole=args.stage == "rm")
    train_set, summary = encode_examples(load_examples(args.train_data_path, **read), **encode)
    log(f"train data: {summary}")
    if args.eval_data_path:
        eval_set, eval_summary = encode_examples(load_examples(args.eval_data_path, **read), **encode)
        log(f"eval data: {eval_summary}")
    else:
        train_set, eval_set = split_eval(train_set, args.eval_ratio, args.seed)
    score_set = build_score_set(args, tokenizer, template_name, load_score_conversations,
                                invalid_records=args.invalid_records, skipped=skipped)
    if skipped:
        log(f"skipped {len(skipped)} invalid records (invalid_records=skip), e.g.:\n  " + "\n  ".join(skipped[:3]))
    first = train_set[0]
    sides = ("chosen", "rejected") if paired else ("completion",)
    for side in sides:
        name = side if paired else ("desirable" if first["label"] else "undesirable")
        labels = [IGNORE] * len(first["prompt_ids"]) + first[f"{side}_ids"]
        log(f"sample 0, {name}, supervised tokens in [[ ]]:\n"
            + show_sample(first["prompt_ids"] + first[f"{side}_ids"], labels, tokenizer))
    return train_set, eval_set, score_set
