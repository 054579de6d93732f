"""The model's own chat template as a template of its own: `template_name="own"`.

For a model outside our families we cannot copy its template into templates/ beforehand, so we train with the
`chat_template` its tokenizer carries. What our families get from `{% generation %}` markers is derived here:

- mask "generation markers": the template marks what the assistant writes; transformers records those spans.
- mask "prefix renders" (any other template): for each assistant message i the conversation before it is rendered
  with the generation prompt, P_i, and the conversation up to and including it, R_i. The whole conversation must
  start with P_i, and R_i up to the end-of-turn token after the message must be the same text inside the whole
  conversation; the supervised span is what lies between: exactly the text the model generates after the prompt it
  is served with (a role header the prompt lacks included). A template that renders earlier turns differently
  once later turns follow (it rewrites history: moves the system message, drops reasoning) fails the check, and
  the conversation is refused rather than trained on text that serving never shows.
- the end-of-turn token: the first control token the template writes right after an assistant message (e.g.
  `<|im_end|>`, `<|eot_id|>`, `</s>`). It is supervised (the model learns to stop) and is a stop token with eos.
  A template that writes none is refused: a model trained on it could not learn to stop.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from transformers.utils.chat_template_utils import render_jinja_template

OWN = "own"
GENERATION_MARKERS = "generation markers"
PREFIX_RENDERS = "prefix renders"
# Probe texts: plain words that no template trims or rewrites, and no tokenizer reads as control tokens.
_PROBE = [{"role": "user", "content": "Probe question one?"}, {"role": "assistant", "content": "Probe answer one."},
          {"role": "user", "content": "Probe question two?"}, {"role": "assistant", "content": "Probe answer two."}]


class OwnTemplateError(ValueError):
    """The model's own template cannot be trained with safely (no template, no end-of-turn, history rewritten)."""


@dataclass(frozen=True)
class OwnTemplate:
    jinja: str
    mask_method: str        # GENERATION_MARKERS or PREFIX_RENDERS
    end_of_turn: str        # control token the template writes right after each assistant message
    bos_token: str
    eos_token: str

    def describe(self) -> str:
        return f"the model's own chat_template, assistant mask from {self.mask_method}, end of turn {self.end_of_turn!r}"


def own_jinja(tokenizer) -> str | None:
    """The tokenizer's chat template text (the 'default' one when a folder ships several)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return template or None


def _specials(tokenizer) -> tuple[str, ...]:
    from .core import control_token_texts
    return tuple(control_token_texts(tokenizer))


def analyze(tokenizer) -> OwnTemplate:
    """Check that the tokenizer's own template can be trained with, and derive its mask method and end of turn."""
    jinja = own_jinja(tokenizer)
    if not jinja:
        raise OwnTemplateError("the tokenizer has no chat_template (a base model?): there is no own template to "
                               "train with; set template_name to one of our families")
    return _analyze(jinja, tokenizer.bos_token or "", tokenizer.eos_token or "", _specials(tokenizer))


@lru_cache(maxsize=16)
def _analyze(jinja: str, bos: str, eos: str, specials: tuple[str, ...]) -> OwnTemplate:
    method = GENERATION_MARKERS if "{% generation" in jinja or "{%- generation" in jinja else PREFIX_RENDERS
    probe = OwnTemplate(jinja, method, "", bos, eos)
    try:
        mid = render_text(probe, _PROBE[:3])
        final = render_text(probe, _PROBE[:2])
    except Exception as err:
        raise OwnTemplateError(f"the model's chat_template cannot render a plain user/assistant conversation: "
                               f"{err}") from err
    after = mid[mid.find("Probe answer one.") + len("Probe answer one."):]
    stripped = after.lstrip()
    end = next((t for t in specials if stripped.startswith(t)), None)
    if end is None or not final[final.find("Probe answer one.") + len("Probe answer one."):].lstrip().startswith(end):
        raise OwnTemplateError(
            f"the model's chat_template writes no end-of-turn token after an assistant message (it writes "
            f"{after[:30]!r}), so a model trained on it could not learn to stop; set template_name to a family "
            f"template")
    own = OwnTemplate(jinja, method, after[:len(after) - len(stripped)] + end, bos, eos)
    from .core import ChatFormatError
    try:
        spans = render_with_spans(own, _PROBE)[1]
    except ChatFormatError as err:  # e.g. Qwen3's: only the last turn gets an (empty) <think> block
        raise OwnTemplateError(f"on a plain two-turn conversation, {err}") from None
    if len(spans) != 2:
        raise OwnTemplateError(f"the model's chat_template marks {len(spans)} assistant spans in a conversation "
                               f"with 2 assistant messages")
    return own


def render_text(own: OwnTemplate, messages, add_generation_prompt: bool = False, tools=None, **options) -> str:
    texts, _ = render_jinja_template(conversations=[messages], tools=tools, chat_template=own.jinja,
                                     add_generation_prompt=add_generation_prompt, bos_token=own.bos_token,
                                     eos_token=own.eos_token, **options)
    return texts[0]


def render_with_spans(own: OwnTemplate, messages, add_generation_prompt: bool = False, tools=None,
                      **options) -> tuple[str, list[tuple[int, int]]]:
    """The whole conversation's text and the [start, end) character span the loss supervises per assistant turn."""
    from .core import ChatFormatError
    if own.mask_method == GENERATION_MARKERS:
        texts, spans = render_jinja_template(
            conversations=[messages], tools=tools, chat_template=own.jinja, return_assistant_tokens_mask=True,
            add_generation_prompt=add_generation_prompt, bos_token=own.bos_token, eos_token=own.eos_token, **options)
        return texts[0], list(spans[0])
    text = render_text(own, messages, add_generation_prompt, tools, **options)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        prompt = render_text(own, messages[:i], True, tools, **options)
        upto = render_text(own, messages[:i + 1], False, tools, **options)
        end = upto.find(own.end_of_turn, len(prompt)) if upto.startswith(prompt) else -1
        end = end + len(own.end_of_turn) if end >= 0 else -1
        if end < 0 or not text.startswith(upto[:end]):
            raise ChatFormatError(
                f"the model's own chat_template renders the conversation before assistant message {i} differently "
                f"once later messages follow (it rewrites earlier turns, e.g. moves the system message or drops "
                f"reasoning), so that turn's loss mask cannot be derived safely; drop this conversation, train on "
                f"single-turn data, or set template_name to a family template")
        spans.append((len(prompt), end))
    return text, spans
