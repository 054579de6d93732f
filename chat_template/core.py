"""Render conversations and turn them into (input_ids, labels) with the loss on assistant tokens only.

How the mask is made, and why it is right for every template:
1. The conversation is rendered ONCE, whole, by the family's jinja (the official template plus `{% generation %}`
   markers). transformers' renderer records the character span of every `{% generation %}` block, i.e. of each
   assistant turn's content and end-of-turn token, exactly where they sit in the final text. Templates that are
   not prefix-preserving (Qwen3 drops earlier turns' reasoning) need no special case: there is no re-rendering of
   prefixes to disagree with.
2. The text is tokenized ONCE, whole, with offsets, so `input_ids` are exactly what the official tokenizer gives
   for the official rendering (no per-segment tokenization that merges differently at the seams).
3. A token is supervised when its character range overlaps a recorded span; an added token that swallows the
   whitespace beside it (lstrip/rstrip, e.g. Phi-3's "<|assistant|>") is judged by its own text only. No token id
   is hard-coded anywhere.
"""
from __future__ import annotations

import json

from transformers.utils.chat_template_utils import render_jinja_template

from . import own
from .registry import TEMPLATES, Template, get_template

IGNORE_INDEX = -100  # the label that cross-entropy in transformers/torch skips


class ChatFormatError(ValueError):
    """A conversation that the template cannot render, or whose content would be misread as control tokens."""


def _render_vars(template: Template, tokenizer=None, **options) -> dict:
    variables = dict(template.options)
    variables.update({k: v for k, v in options.items() if v is not None})
    if tokenizer is not None:
        variables.setdefault("bos_token", tokenizer.bos_token or "")
        variables.setdefault("eos_token", tokenizer.eos_token or "")
    return variables


def uses_tools(messages, tools=None) -> bool:
    """Whether a conversation needs a template's tool rendering: tool schemas, assistant tool calls or tool results."""
    return bool(tools) or any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)


def supports_tools(template_name: str, tokenizer=None) -> bool:
    """Whether a template renders tool schemas and calls: a registry fact for our families; for the model's own
    template, whether its text reads `tools` and `tool_calls` at all (one that does not would drop them)."""
    if template_name == own.OWN:
        jinja = own.own_jinja(tokenizer) if tokenizer is not None else None
        return bool(jinja) and "tool_calls" in jinja and "tools" in jinja.replace("tool_calls", "")
    return get_template(template_name).supports_tools


def check_tools(messages, tools, template_name: str, tokenizer=None) -> None:
    """Refuse tool data for a template whose official text has no tool rendering (it would drop or garble it)."""
    if uses_tools(messages, tools) and not supports_tools(template_name, tokenizer):
        able = ", ".join(name for name, t in TEMPLATES.items() if t.supports_tools)
        raise ChatFormatError(f"this conversation has tool schemas, tool calls or tool results, but template "
                              f"{template_name!r} has no tool rendering (its official template has none); "
                              f"templates that render tools: {able}")


def _jinja_and_vars(template: Template, tokenizer, **options) -> tuple[str, dict]:
    """Our jinja with its render variables. A tokenizer that `apply_to_tokenizer` gave our template carries the run's
    render options (e.g. default_system) baked in as defaults: that text is rendered, so what trains is exactly what
    is saved; options given here still win."""
    variables = _render_vars(template, tokenizer, **options)
    baked = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if isinstance(baked, str) and baked != template.jinja and baked.endswith(template.jinja) \
            and baked.startswith("{%- if "):
        for name, default in template.options.items():
            if options.get(name) is None:
                del variables[name]
        return baked, variables
    return template.jinja, variables


def render_with_spans(messages, template_name: str, add_generation_prompt: bool = False, tools=None,
                      tokenizer=None, **options) -> tuple[str, list[tuple[int, int]]]:
    """Render one conversation; return the text and the [start, end) character spans of each assistant turn."""
    if template_name == own.OWN:
        if tokenizer is None:
            raise ValueError("template 'own' is the tokenizer's own chat_template: pass tokenizer=")
        try:
            return own.render_with_spans(own.analyze(tokenizer), messages, add_generation_prompt, tools, **options)
        except (own.OwnTemplateError, ChatFormatError):
            raise
        except Exception as err:  # jinja's raise_exception and type errors surface here
            raise ChatFormatError(f"the model's own chat_template cannot render this conversation: {err}") from err
    template = get_template(template_name)
    if not template.supports_system and messages and messages[0].get("role") == "system":
        raise ChatFormatError(f"template {template_name!r} has no system role (the official template refuses it); "
                              "drop the system message or put its text into the first user turn")
    check_tools(messages, tools, template_name)
    # transformers' apply_chat_template drops None-valued keys (OpenAI's `content: null` beside tool calls) before
    # rendering, and official templates are written for that: do the same, or Qwen3's `'</think>' in content` fails
    messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
    jinja, variables = _jinja_and_vars(template, tokenizer, **options)
    try:
        texts, spans = render_jinja_template(
            conversations=[messages], tools=tools, chat_template=jinja,
            return_assistant_tokens_mask=True, add_generation_prompt=add_generation_prompt, **variables,
        )
    except Exception as err:  # jinja's raise_exception and type errors surface here
        raise ChatFormatError(f"template {template_name!r} cannot render this conversation: {err}") from err
    return texts[0], list(spans[0])


def render(messages, template_name: str, add_generation_prompt: bool = False, tokenizer=None, tools=None,
           **options) -> str:
    """The text the model sees. bos/eos come from `tokenizer`, or from `bos_token=`/`eos_token=` options."""
    return render_with_spans(messages, template_name, add_generation_prompt, tools=tools, tokenizer=tokenizer,
                             **options)[0]


def control_token_texts(tokenizer) -> list[str]:
    """Special-token strings the tokenizer would turn into control tokens wherever they appear in text."""
    texts = set(tokenizer.all_special_tokens)
    texts.update(tok.content for tok in tokenizer.added_tokens_decoder.values() if tok.special)
    return sorted((t for t in texts if t), key=len, reverse=True)


def find_control_text(messages, tokenizer, tools=None) -> tuple[int | None, str, str] | None:
    """First (message index, field, token text) where text contains special-token text, or None.

    Tool schemas and calls come first (`special_text="keep"` cannot cover them), checked as the JSON text the
    templates write (message index None: `tools`)."""
    specials = control_token_texts(tokenizer)
    fields = [(None, "tools", json.dumps(tools, ensure_ascii=False))] if tools else []
    fields += [(i, "tool_calls", json.dumps(m["tool_calls"], ensure_ascii=False))
               for i, m in enumerate(messages) if m.get("tool_calls")]
    fields += [(i, field, message.get(field)) for i, message in enumerate(messages)
               for field in ("content", "reasoning_content")]
    for i, field, value in fields:
        if isinstance(value, str):
            for text in specials:
                if text in value:
                    return i, field, text
    return None


def _mask_content(messages, specials):
    """Replace each special-token occurrence in content with a same-length run of one private-use character.

    Same length keeps every character offset valid, and the runs can be found again after rendering."""
    originals, masked = [], []
    for message in messages:
        message = dict(message)
        for field in ("content", "reasoning_content"):
            value = message.get(field)
            if not isinstance(value, str):
                continue
            for text in specials:
                while text in value:
                    placeholder = chr(0xE000 + len(originals)) * len(text)
                    originals.append(text)
                    value = value.replace(text, placeholder, 1)
            message[field] = value
        masked.append(message)
    return masked, originals


def _tokenize(text: str, tokenizer, literal_runs: list[tuple[int, int]]):
    """Token ids and character offsets of `text`; the `literal_runs` are tokenized as plain text, not control tokens.

    Without literal runs this is one plain tokenization of the whole text. With them, the text is tokenized piece by
    piece, the way transformers' `apply_chat_template(..., sanitize_control_tokens=True)` does it: a piece that
    starts mid-text is tokenized after a "\n" that is then dropped, or SentencePiece tokenizers (Phi-3, Llama-2)
    would put a prefix "▁" at the start of every piece."""
    pieces, cursor = [], 0
    for start, end in literal_runs:
        pieces += [(cursor, start, False), (start, end, True)]
        cursor = end
    pieces.append((cursor, len(text), False))

    def tokenize(piece, literal):
        enc = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=literal)
        return enc["input_ids"], enc["offset_mapping"]

    newline_ids = tokenizer("\n", add_special_tokens=False)["input_ids"]
    ids, offsets = [], []
    for start, end, literal in pieces:
        if start == end:
            continue
        prefix = "\n" if start > 0 else ""
        piece_ids, piece_offsets = tokenize(prefix + text[start:end], literal)
        if prefix and piece_ids[:len(newline_ids)] == newline_ids:
            piece_ids, piece_offsets = piece_ids[len(newline_ids):], piece_offsets[len(newline_ids):]
        elif prefix:  # the newline merged into the piece's first token: tokenize the piece alone
            prefix = ""
            piece_ids, piece_offsets = tokenize(text[start:end], literal)
        shift = start - len(prefix)
        ids += piece_ids
        offsets += [(max(s + shift, start), max(e + shift, start)) for s, e in piece_offsets]
    return ids, offsets


def encode(messages, tokenizer, template_name: str, add_generation_prompt: bool = False, max_len: int | None = None,
           train_on: str = "all", special_text: str = "error", tools=None, **options) -> dict:
    """Token ids and labels for one conversation.

    labels[i] == input_ids[i] on assistant content and its end-of-turn token(s), IGNORE_INDEX elsewhere (the model
    shifts labels itself, as every transformers causal LM does). `train_on="last"` supervises only the final
    assistant turn. `special_text`: "error" refuses content that contains special-token text (it would become a
    control token, e.g. a user typing "<|im_end|>" ends the turn early); "keep" tokenizes it as plain text.
    """
    if train_on not in ("all", "last"):
        raise ValueError(f"train_on must be 'all' or 'last', got {train_on!r}")
    if special_text not in ("error", "keep"):
        raise ValueError(f"special_text must be 'error' or 'keep', got {special_text!r}")
    check_tools(messages, tools, template_name, tokenizer)
    specials = control_token_texts(tokenizer)
    hit = find_control_text(messages, tokenizer, tools)
    originals = []
    if hit and (special_text == "error" or hit[1] in ("tool_calls", "tools")):
        i, field, text = hit
        where = "field 'tools'" if i is None else f"message {i} ({messages[i].get('role')}) field '{field}'"
        fix = ("special_text='keep' covers message text only: clean the tool JSON" if field in ("tool_calls", "tools")
               else "clean the data or set special_text='keep' to tokenize it as plain text")
        raise ChatFormatError(f"{where} contains the special-token text {text!r}, which would be read as a control "
                              f"token; {fix}")
    if hit:
        messages, originals = _mask_content(messages, specials)
    text, spans = render_with_spans(messages, template_name, add_generation_prompt, tools=tools,
                                    tokenizer=tokenizer, **options)
    runs = []
    for k, original in enumerate(originals):
        placeholder = chr(0xE000 + k) * len(original)
        start = text.find(placeholder)
        if start < 0:  # the template dropped this content (e.g. Qwen3's earlier reasoning)
            continue
        text = text[:start] + original + text[start + len(original):]
        runs.append((start, start + len(original)))
    input_ids, offsets = _tokenize(text, tokenizer, sorted(runs))

    if train_on == "last":
        spans = spans[-1:]
    labels = [IGNORE_INDEX] * len(input_ids)
    added = {token_id: token.content for token_id, token in tokenizer.added_tokens_decoder.items()}
    for i, (s, e) in enumerate(offsets):
        literal = added.get(input_ids[i])
        if literal and e - s > len(literal):  # an lstrip/rstrip added token (Phi-3's "<|assistant|>") also owns
            at = text.find(literal, s, e)     # the whitespace beside it: judge it by its own text, or a header
            if at >= 0:                       # would be supervised when the content starts with whitespace
                s, e = at, at + len(literal)
        if e == s:  # a token with no characters (rare; e.g. added-space artefacts) belongs to its successor's span
            e = s + 1
        if any(s < span_end and span_start < e for span_start, span_end in spans):
            labels[i] = input_ids[i]
    if max_len is not None:
        input_ids, labels = input_ids[:max_len], labels[:max_len]
    return {"input_ids": input_ids, "labels": labels}


def supervised_runs(input_ids, labels, tokenizer) -> list[tuple[str, bool]]:
    """The sample decoded in runs of consecutive tokens that the loss supervises or not: (text, supervised)."""
    runs, run, inside = [], [], False
    for token_id, label in zip(input_ids, labels):
        supervised = label != IGNORE_INDEX
        if run and supervised != inside:
            runs.append((tokenizer.decode(run), inside))
            run = []
        inside = supervised
        run.append(token_id)
    if run:
        runs.append((tokenizer.decode(run), inside))
    return runs


def show_sample(input_ids, labels, tokenizer, opening: str = "[[", closing: str = "]]") -> str:
    """The sample decoded, each supervised run wrapped in [[ ]]: how the training log and
    `python -m chat_template show` print what a sample trains on."""
    return "".join(f"{opening}{text}{closing}" if supervised else text
                   for text, supervised in supervised_runs(input_ids, labels, tokenizer))
