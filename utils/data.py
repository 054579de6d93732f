"""Encode training data: conversations (read and validated by chat_template/conversations.py, where the record
shapes are described) become token ids and assistant-only labels in a `datasets` table, and an eval split.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import chat_template
from chat_template import show_sample  # the one sample printer (utils.preference_data imports it from here)
from chat_template.conversations import Conversation, DataError, load_conversations


@dataclass
class EncodeSummary:
    total: int
    kept: int
    dropped_no_supervision: int
    max_len: int
    supervised_tokens: int
    tokens: int
    skipped_invalid: int = 0  # records the template refused (invalid_records=skip)

    def __str__(self):
        text = (f"{self.kept} of {self.total} samples, {self.tokens} tokens, {self.supervised_tokens} supervised")
        if self.dropped_no_supervision:
            text += (f"; dropped {self.dropped_no_supervision} of {self.total}: no assistant tokens left after "
                     f"truncation to {self.max_len}")
        if self.skipped_invalid:
            text += f"; skipped {self.skipped_invalid} of {self.total} invalid (invalid_records=skip)"
        return text


def check_tool_support(conversations: list[Conversation], template_name: str, tokenizer) -> None:
    """Tool data on a template without tool rendering is a setup error, not a bad record: never skipped."""
    for c in conversations:
        try:
            chat_template.check_tools(c.messages, c.tools, template_name, tokenizer)
        except chat_template.ChatFormatError as err:
            raise DataError(f"{c.source}: {err}") from None


def encode_conversations(conversations: list[Conversation], tokenizer, template_name: str, max_len: int,
                         train_on: str = "all", special_text: str = "error", invalid_records: str = "error",
                         skipped: list | None = None):
    """A `datasets.Dataset` of input_ids/labels, and a summary. Samples left with no supervised token are dropped:
    an all-masked sample adds nothing but a loss of 0 that looks like success. A conversation the template
    refuses (e.g. special-token text in content) stops the run, or with invalid_records="skip" is dropped, counted
    and its error appended to `skipped`."""
    import datasets

    check_tool_support(conversations, template_name, tokenizer)

    def encode_row(row):
        try:
            enc = chat_template.encode(json.loads(row["messages"]), tokenizer, template_name, max_len=max_len,
                                       train_on=train_on, special_text=special_text, tools=json.loads(row["tools"]))
        except chat_template.ChatFormatError as err:
            if invalid_records != "skip":
                raise DataError(f"{row['source']}: {err}") from None
            return {"input_ids": [], "labels": [], "n_supervised": -1, "error": f"{row['source']}: {err}"}
        enc["n_supervised"] = sum(label != chat_template.IGNORE_INDEX for label in enc["labels"])
        return {**enc, "error": ""}

    # messages and tools travel as JSON text: Arrow would otherwise unify optional keys across records
    raw = datasets.Dataset.from_dict({"messages": [json.dumps(c.messages, ensure_ascii=False) for c in conversations],
                                      "tools": [json.dumps(c.tools, ensure_ascii=False) for c in conversations],
                                      "source": [c.source for c in conversations]})
    ids = datasets.Sequence(datasets.Value("int64"))  # stated: a batch of skipped (empty) rows has no type to infer
    features = datasets.Features({"input_ids": ids, "labels": ids, "n_supervised": datasets.Value("int64"),
                                  "error": datasets.Value("string")})
    encoded = raw.map(encode_row, remove_columns=raw.column_names, features=features, desc="encode")
    errors = [e for e in encoded["error"] if e]
    if skipped is not None:
        skipped += errors
    kept = encoded.filter(lambda n: n > 0, input_columns="n_supervised", desc="drop unsupervised")
    summary = EncodeSummary(
        total=len(encoded), kept=len(kept), dropped_no_supervision=len(encoded) - len(kept) - len(errors),
        max_len=max_len, supervised_tokens=sum(kept["n_supervised"]), tokens=sum(map(len, kept["input_ids"])),
        skipped_invalid=len(errors))
    if not len(kept):
        raise DataError(f"no usable samples: {summary}")
    return kept.remove_columns(["n_supervised", "error"]), summary


def split_eval(dataset, eval_ratio: float, seed: int):
    if eval_ratio <= 0:
        return dataset, None
    parts = dataset.train_test_split(test_size=eval_ratio, seed=seed)
    return parts["train"], parts["test"]


def build_score_set(args, tokenizer, template_name: str, load, **read) -> list[Conversation] | None:
    """The first score_samples conversations of score_data_path (load reads them), to answer before and after
    training; None without score_data_path."""
    if not args.score_data_path:
        return None
    score_set = load(args.score_data_path, **read)[:args.score_samples]
    check_tool_support(score_set, template_name, tokenizer)
    return score_set


def build_datasets(args, tokenizer, template_name: str, log=print):
    """(train, eval or None, score conversations or None) for a run, with a summary and one marked sample logged."""
    skipped = []
    read = dict(invalid_records=args.invalid_records, skipped=skipped)
    encode = dict(tokenizer=tokenizer, template_name=template_name, max_len=args.max_len, train_on=args.train_on,
                  special_text=args.special_text, **read)
    train_set, summary = encode_conversations(load_conversations(args.train_data_path, **read), **encode)
    log(f"train data: {summary}")
    if args.eval_data_path:
        eval_set, eval_summary = encode_conversations(load_conversations(args.eval_data_path, **read), **encode)
        log(f"eval data: {eval_summary}")
    else:
        train_set, eval_set = split_eval(train_set, args.eval_ratio, args.seed)
    score_set = build_score_set(args, tokenizer, template_name, load_conversations, **read)
    if skipped:
        log(f"skipped {len(skipped)} invalid records (invalid_records=skip), e.g.:\n  " + "\n  ".join(skipped[:3]))
    log("sample 0, supervised tokens in [[ ]]:\n" + show_sample(train_set[0]["input_ids"], train_set[0]["labels"],
                                                                 tokenizer))
    return train_set, eval_set, score_set
