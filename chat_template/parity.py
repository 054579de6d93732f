"""Train/serve parity: does our template render what the model folder's own chat_template renders?

vLLM, transformers and llama.cpp serve a fine-tuned model with the chat_template its folder carries. Before a run
trains with one of our templates, a few probe conversations (with and without a system message, several turns,
with and without the generation prompt) are rendered through ours and through the model's own template; any
difference is a prompt the model would be trained on but never served with (e.g. Qwen2.5's default system prompt).
"""
from __future__ import annotations

from transformers.utils.chat_template_utils import render_jinja_template

from .core import render
from .registry import get_template


def _u(text):
    return {"role": "user", "content": text}


def _a(text):
    return {"role": "assistant", "content": text}


_SYSTEM = {"role": "system", "content": "Answer briefly."}
# name -> (messages, add_generation_prompt); plain words that no template trims or reads as control tokens
PROBES = {
    "one user message, generation prompt": ([_u("Hi there!")], True),
    "system + user, generation prompt": ([_SYSTEM, _u("Hi there!")], True),
    "two finished turns": ([_u("What is 2+2?"), _a("It is 4."), _u("And 3+3?"), _a("It is 6.")], False),
    "system + a turn + user, generation prompt": ([_SYSTEM, _u("What is 2+2?"), _a("It is 4."), _u("And 3+3?")], True),
}


def _render_theirs(jinja: str, tokenizer, messages, add_generation_prompt: bool) -> str:
    texts, _ = render_jinja_template(conversations=[messages], chat_template=jinja,
                                     add_generation_prompt=add_generation_prompt,
                                     bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token or "")
    return texts[0]


def _attempt(fn):
    try:
        return fn(), None
    except Exception as err:  # a template that refuses a probe (Gemma 2 refuses a system message)
        return None, f"{type(err).__name__}: {err}"


def first_difference(tokenizer, template_name: str, model_jinja: str, skip_without_system: bool = False,
                     **options) -> str | None:
    """None when our template renders every probe exactly as `model_jinja` does, else where the first one differs."""
    # bos/eos as options, not through the tokenizer: our jinja is rendered, not a copy already put on the tokenizer
    specials = {"bos_token": tokenizer.bos_token or "", "eos_token": tokenizer.eos_token or ""}
    for name, (messages, generation) in PROBES.items():
        if skip_without_system and messages[0]["role"] != "system":
            continue
        ours, our_err = _attempt(lambda: render(messages, template_name, generation, **specials, **options))
        theirs, their_err = _attempt(lambda: _render_theirs(model_jinja, tokenizer, messages, generation))
        if our_err and their_err:
            continue  # both refuse it: the same behaviour
        if our_err or their_err:
            refuser, renderer = ("ours", "the model's own") if our_err else ("the model's own", "ours")
            return f"probe '{name}': {refuser} refuses it ({our_err or their_err}) while {renderer} renders it"
        if ours != theirs:
            at = next((i for i, (x, y) in enumerate(zip(ours, theirs)) if x != y), min(len(ours), len(theirs)))
            start = max(0, at - 30)
            return (f"probe '{name}' differs at character {at}: ours {ours[start:at + 50]!r}, the model's own "
                    f"{theirs[start:at + 50]!r}")
    return None


def matching_variant(tokenizer, template_name: str, model_jinja: str) -> tuple[dict | None, str | None]:
    """(render options of the official variant that renders like `model_jinja`, None) or (None, first difference
    against the family's first variant)."""
    first = None
    for options in get_template(template_name).variants:
        difference = first_difference(tokenizer, template_name, model_jinja, **options)
        if difference is None:
            return dict(options), None
        first = first or difference
    return None, first
