"""Load a tokenizer that is right for training chat models."""
from __future__ import annotations

import chat_template
from chat_template import control_token_texts
from chat_template.own import own_jinja
from chat_template.parity import first_difference, matching_variant
from utils.model_source import resolve_model_source

PAD_TOKEN = "<|pad|>"


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """A folder's (or hub id's) own tokenizer, or the one a preset starts from."""
    return resolve_model_source(name_or_path, trust_remote_code).load_tokenizer()


def set_pad_token(tokenizer, template_name: str) -> None:
    """Give the tokenizer a pad token that is no stop token of the template.

    Labels here come from the template's spans, never from comparing ids with pad, so even pad == eos could not
    mask the end-of-turn token; a distinct pad keeps other tools (and attention masks built from ids) honest too.
    A new token may be added: build_model then grows the embeddings to len(tokenizer)."""
    stops = set(chat_template.stop_token_ids(tokenizer, template_name))
    if tokenizer.eos_token_id is not None:
        stops.add(tokenizer.eos_token_id)
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id not in stops:
        return
    vocab = tokenizer.get_vocab()
    # get_vocab() order comes from a hash map and changes between loads: sorting by id makes the pick (and the
    # saved pad_token_id) the same on every run
    pad_like = sorted((t for t in vocab if "pad" in t.lower() and t.startswith("<")), key=vocab.__getitem__)
    candidates = [tokenizer.unk_token] + pad_like
    for token in candidates:
        if token and token in vocab and vocab[token] not in stops:
            tokenizer.pad_token = token
            return
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})


def _template_options(args, tokenizer, name: str, model_jinja: str | None) -> tuple[dict, str]:
    """Render options for one of our templates (the model's official variant, then default_system), and what the
    train/serve parity check found. A difference stops the run unless template_mismatch is ok."""
    template = chat_template.get_template(name)
    options, difference = {}, None
    if model_jinja:
        options, difference = matching_variant(tokenizer, name, model_jinja)
        options = options or {}
    if args.default_system is not None:
        if "default_system" not in template.options:
            raise ValueError(f"default_system: template {name!r} has no default system prompt to set (put a system "
                             f"message into the data instead)")
        options["default_system"] = args.default_system
        if model_jinja:  # a chosen default system differs on purpose: check the conversations that have one
            difference = first_difference(tokenizer, name, model_jinja, skip_without_system=True, **options)
    if not model_jinja:
        return options, "the model has no chat_template (a base model): nothing to check ours against"
    if difference is None:
        return options, "renders the probe conversations exactly as the model's own chat_template"
    if args.template_mismatch != "ok":
        raise ValueError(
            f"template_name {name!r} renders differently from the model folder's own chat_template, the one it is "
            f"served with: {difference}. Training with it teaches prompts the model never sees at serving time. "
            f"Omit template_name to train with the model's own template, or set --template_mismatch ok to accept "
            f"the difference")
    return options, f"differs from the model's own chat_template (accepted by template_mismatch ok): {difference}"


def pick_template(args, tokenizer) -> tuple[str, str, dict]:
    """(template name, why, render options). Looks at the tokenizer's own chat_template before anything changes it."""
    source = resolve_model_source(args.model_name_or_path)
    if source.template and not args.template_name:
        return source.template, f"{source.family.name} preset", {}
    if args.template_name:
        if args.template_name != chat_template.OWN:
            chat_template.get_template(args.template_name)  # fails early on a typo
        name, reason = args.template_name, "set by template_name"
    else:
        name, reason = chat_template.detect(args.model_name_or_path, tokenizer)
    if name == chat_template.OWN:
        if args.default_system is not None:
            raise ValueError("default_system cannot be set with the model's own template (it is used as it is); "
                             "put a system message into the data instead")
        chat_template.own.analyze(tokenizer)  # refuses a template whose mask cannot be derived, saying why
        return name, reason, {}
    if source.from_scratch:  # no folder chat_template to check ours against
        return name, reason, {}
    options, parity = _template_options(args, tokenizer, name, own_jinja(tokenizer))
    shown = "".join(f", {k}={v!r}" for k, v in options.items())
    return name, f"{reason}{shown}; {parity}", options


def add_control_tokens(tokenizer, template_name: str, allow_new: bool = False) -> list[str]:
    """Make the template's control tokens atomic special tokens; return those new to the vocabulary.

    A base tokenizer (Yi's) may hold `<|im_start|>` in its vocabulary yet split the text into characters;
    registering it keeps its id. A token missing from the vocabulary would get a new, random embedding that LoRA
    never trains: refused unless `allow_new` (train_new_tokens), and then build_model grows the embeddings."""
    if template_name == chat_template.OWN:
        return []
    special = set(control_token_texts(tokenizer))
    missing = [t for t in chat_template.get_template(template_name).special_tokens if t not in special]
    vocab = tokenizer.get_vocab()
    new = [t for t in missing if t not in vocab]
    if new and not allow_new:
        raise ValueError(
            f"template {template_name!r} writes control tokens that this tokenizer's vocabulary lacks: "
            f"{', '.join(new)}. Their embeddings would start random and the model has never seen them; choose the "
            f"template the model was trained with, or set --train_new_tokens true to add and train them")
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    return new


def build_tokenizer(args):
    """(tokenizer, template_name, why that template). Tokens it adds make len(tokenizer) exceed the model's
    vocabulary; build_model grows the embeddings to match."""
    tokenizer = load_tokenizer(args.tokenizer_name_or_path or args.model_name_or_path, args.trust_remote_code)
    template_name, reason, options = pick_template(args, tokenizer)
    from_scratch = resolve_model_source(args.model_name_or_path).from_scratch  # every embedding starts random
    new = add_control_tokens(tokenizer, template_name, allow_new=args.train_new_tokens or from_scratch)
    if new and not from_scratch:
        trained = ("full fine-tuning trains them" if args.train_mode == "full" else
                   "LoRA also trains and saves the input embeddings and the output head (modules_to_save)")
        reason += f"; added {len(new)} new control tokens ({', '.join(new)}) with new embeddings: {trained}"
    if not from_scratch:  # what the run does: apply_peft trains the embeddings only when tokens were added
        args.train_new_tokens = bool(new)
    set_pad_token(tokenizer, template_name)
    tokenizer.padding_side = "right"
    chat_template.apply_to_tokenizer(tokenizer, template_name, **options)
    return tokenizer, template_name, reason
