"""Chat templates: one definition per model family, identical to the official one, with assistant-only masks.

    render(messages, template_name, add_generation_prompt=False, tools=None, **options) -> str
    encode(messages, tokenizer, template_name, ...) -> {"input_ids": [...], "labels": [...]}
    get_template(name) -> Template (stop tokens, default system, bos handling, source)
    detect(model_path_or_tokenizer) -> (name, reason)
    apply_to_tokenizer(tokenizer, name) puts our definition on `tokenizer.chat_template`
    show_sample(input_ids, labels, tokenizer) -> the decoded sample, supervised runs wrapped in [[ ]]

`template_name="own"` (own.py) is the tokenizer's own chat_template, for models outside our families.
"""
from . import own
from .core import (IGNORE_INDEX, ChatFormatError, check_tools, control_token_texts, encode, find_control_text,
                   render, show_sample, supervised_runs, supports_tools, uses_tools)
from .detect import detect
from .own import OWN, OwnTemplateError
from .registry import TEMPLATES, Template, get_template


def apply_to_tokenizer(tokenizer, template_name: str, **options) -> None:
    """Make `tokenizer.chat_template` our definition, with any render option (e.g. default_system) baked in,
    so a saved model renders prompts in exactly the format it was trained on, in any inference engine."""
    if template_name == OWN:
        if options:
            raise ValueError(f"render options {sorted(options)} cannot be set on the model's own template")
        own.analyze(tokenizer)  # refuses a template that cannot be trained with
        return  # the tokenizer keeps its own template: it is what the run trains with
    template = get_template(template_name)
    # a default, not a constant: a call-time value (e.g. enable_thinking=False at inference) must still win
    preamble = "".join(f"{{%- if {k} is not defined %}}{{%- set {k} = {v!r} %}}{{%- endif %}}"
                       for k, v in {**template.options, **options}.items() if k in template.options)
    tokenizer.chat_template = preamble + template.jinja


def stop_token_ids(tokenizer, template_name: str) -> list[int]:
    """Ids `generate` must stop on for this template; every stop token must exist in the vocabulary."""
    ids = []
    if template_name == OWN:
        texts = [own.analyze(tokenizer).end_of_turn.strip(), tokenizer.eos_token]
    else:
        texts = get_template(template_name).stop_token_strings(tokenizer.eos_token)
    for text in texts:
        if not text:
            continue
        token_id = tokenizer.convert_tokens_to_ids(text)
        if token_id is None or token_id == tokenizer.unk_token_id:
            continue  # e.g. a base tokenizer without the chat's secondary stop token
        if token_id not in ids:
            ids.append(token_id)
    if not ids:
        raise ValueError(f"none of the stop tokens of template {template_name!r} is in this tokenizer's vocabulary")
    return ids


def describe(tokenizer, template_name: str) -> dict:
    """How a run's template was chosen and its loss mask derived, for the run record (dojo_run.json)."""
    if template_name == OWN:
        analysis = own.analyze(tokenizer)
        return {"template": OWN, "mask": analysis.mask_method, "end_of_turn": analysis.end_of_turn.strip()}
    return {"template": template_name, "mask": "generation markers in chat_template/templates/"
            f"{template_name}.jinja"}


__all__ = ["IGNORE_INDEX", "OWN", "ChatFormatError", "OwnTemplateError", "TEMPLATES", "Template",
           "apply_to_tokenizer", "check_tools", "control_token_texts", "describe", "detect", "encode", "find_control_text",
           "get_template", "render", "show_sample", "stop_token_ids", "supervised_runs", "supports_tools",
           "uses_tools"]
