"""Look at the chat templates from the command line.

    python -m chat_template list
        a table of every template: families, stop tokens, default system, system role, bos, source
    python -m chat_template show --template qwen --tokenizer DIR --data FILE --index N [--max_len L]
        one training sample as the model sees it, supervised tokens wrapped in [[ ]], and the token counts

`show` reads the data as training does (conversations.py) and the tokenizer folder as it was shipped (loading.py).
"""
from __future__ import annotations

import argparse
import sys

from . import IGNORE_INDEX, TEMPLATES, detect, encode, loading, render, show_sample
from .conversations import DataError, load_conversations
from .own import own_jinja
from .parity import matching_variant

OPEN, CLOSE = "[[", "]]"
GREEN, RESET = "\033[32m", "\033[0m"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_list(args) -> int:
    rows = [["name", "families", "stop tokens", "default system", "system", "tools", "bos in template", "source"]]
    for t in TEMPLATES.values():
        stops = ", ".join("<tokenizer eos>" if s == "{eos}" else s for s in t.stop_tokens)
        rows.append([t.name, t.families, stops, repr(t.default_system) if t.default_system else "-",
                     "yes" if t.supports_system else "no (raises)", "yes" if t.supports_tools else "no",
                     "yes" if t.bos_in_template else "no", t.source])
    print(_table(rows))
    return 0


def _marked_text(text: str, labels, offsets, complete: bool, color: bool) -> str:
    """The rendered text (up to the last kept token unless `complete`), supervised token runs wrapped in [[ ]]."""
    opening, closing = (GREEN + OPEN, CLOSE + RESET) if color else (OPEN, CLOSE)
    out, cursor, inside = [], 0, False
    for (start, end), label in zip(offsets, labels):
        supervised = label != IGNORE_INDEX
        if supervised and not inside:  # text between tokens stays outside the brackets
            boundary = max(cursor, start)
            out += [text[cursor:boundary], opening]
            cursor = boundary
        elif inside and not supervised:
            out.append(closing)
        inside = supervised
        if end > cursor:
            out.append(text[cursor:end])
            cursor = end
    if inside:
        out.append(closing)
    if complete:
        out.append(text[cursor:])
    return "".join(out)


def cmd_show(args) -> int:
    try:
        conversations = load_conversations(args.data)
    except DataError as err:  # the data is validated whole, as training reads it
        print(f"error: {err}", file=sys.stderr)
        return 1
    if not 0 <= args.index < len(conversations):
        print(f"error: --index {args.index} is out of range; {args.data} holds {len(conversations)} samples "
              f"(0..{len(conversations) - 1})", file=sys.stderr)
        return 2
    conversation = conversations[args.index]
    tokenizer = loading.load_tokenizer_folder(args.tokenizer)
    template_name, how = args.template, "given"
    if template_name is None:
        template_name, how = detect(args.tokenizer, tokenizer=tokenizer)
    options = {"default_system": args.default_system} if args.default_system is not None else {}
    if not options and template_name != "own" and own_jinja(tokenizer):  # as training does: the folder's variant
        options = matching_variant(tokenizer, template_name, own_jinja(tokenizer))[0] or {}
    try:
        options["tools"] = conversation.tools
        enc = encode(conversation.messages, tokenizer, template_name, max_len=args.max_len, train_on=args.train_on,
                     special_text=args.special_text, **options)
        text = render(conversation.messages, template_name, tokenizer=tokenizer, **options)
    except ValueError as err:  # ChatFormatError, or an own template whose mask cannot be derived
        print(f"error: {conversation.source}: {err}", file=sys.stderr)
        return 1
    ids, labels = enc["input_ids"], enc["labels"]
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())

    plain = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    full_len = len(plain["input_ids"])
    if plain["input_ids"][:len(ids)] == ids:
        added = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
        offsets = []
        for token_id, (start, end) in zip(ids, plain["offset_mapping"]):
            at = text.find(added[token_id], start, end) if token_id in added else -1
            offsets.append((at, at + len(added[token_id])) if at >= 0 else (start, end))  # rstrip tokens: own text
        body = _marked_text(text, labels, offsets, len(ids) == full_len, color)
    else:
        body = show_sample(ids, labels, tokenizer, *((GREEN + OPEN, CLOSE + RESET) if color else (OPEN, CLOSE)))
        full_len = len(encode(conversation.messages, tokenizer, template_name, train_on=args.train_on,
                              special_text=args.special_text, **options)["input_ids"])

    supervised = sum(label != IGNORE_INDEX for label in labels)
    print(f"sample    {conversation.source} (index {args.index})")
    print(f"template  {template_name} ({how}); tokenizer {args.tokenizer}")
    truncated = f", truncated from {full_len} by --max_len {args.max_len}" if len(ids) < full_len else ""
    print(f"tokens    total {len(ids)}, supervised {supervised} ({100 * supervised / max(len(ids), 1):.1f}%)"
          f"{truncated}")
    print(f"--- rendered sample; supervised tokens inside {OPEN} {CLOSE} ---")
    print(body)
    print("--- end ---")
    if args.tokens:
        print(f"{'pos':>5}  {'id':>7}  {'label':>7}  {'token':<20}  text")
        for i, (token_id, label) in enumerate(zip(ids, labels)):
            token = repr(tokenizer.convert_ids_to_tokens(token_id))
            print(f"{i:>5}  {token_id:>7}  {label:>7}  {token:<20}  {tokenizer.decode([token_id])!r}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chat_template", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="table of the templates")
    show = sub.add_parser("show", help="one sample, rendered, with its supervised tokens marked")
    show.add_argument("--template", choices=[*TEMPLATES, "own"],
                      help="template name, or own: the tokenizer's own chat_template (default: detect from --tokenizer)")
    show.add_argument("--tokenizer", required=True, help="tokenizer or model folder")
    show.add_argument("--data", required=True, help="data file (alpaca / messages / sharegpt, .jsonl or .json)")
    show.add_argument("--index", type=int, default=0, help="0-based sample index (default 0)")
    show.add_argument("--max_len", type=int, default=None, help="truncate to this many tokens, as training does")
    show.add_argument("--train_on", choices=["all", "last"], default="all")
    show.add_argument("--special_text", choices=["error", "keep"], default="error")
    show.add_argument("--default_system", default=None, help="render option for templates that inject one (qwen)")
    show.add_argument("--tokens", action="store_true", help="also list every token with its id and label")
    show.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                      help="also color the supervised runs (default: when writing to a terminal)")
    args = parser.parse_args(argv)
    return cmd_list(args) if args.command == "list" else cmd_show(args)


if __name__ == "__main__":
    sys.exit(main())
