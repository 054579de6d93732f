"""encode() options, stop tokens, detect() and apply_to_tokenizer(), on the real tokenizers."""
from __future__ import annotations

import json

import pytest

from chat_template import (IGNORE_INDEX, TEMPLATES, apply_to_tokenizer, detect, encode, get_template, render,
                           show_sample, stop_token_ids, supervised_runs)
from chat_template.detect import _from_markers

MESSAGES = [{"role": "user", "content": "Hi! 你好"}, {"role": "assistant", "content": "Hello, how can I help?"},
            {"role": "user", "content": "Count to three."}, {"role": "assistant", "content": "One, two, three."}]
SYSTEM = {"role": "system", "content": "You are brief."}


@pytest.mark.parametrize("template_name", list(TEMPLATES))
def test_max_len_truncates_ids_and_labels_together(template_name, template_tokenizer, primary):
    tok, options = template_tokenizer(template_name), primary[template_name][2]
    full = encode(MESSAGES, tok, template_name, **options)
    n = len(full["input_ids"])
    first_supervised = next(i for i, label in enumerate(full["labels"]) if label != IGNORE_INDEX)
    for max_len in (1, first_supervised + 2, n - 1, n, n + 10):
        cut = encode(MESSAGES, tok, template_name, max_len=max_len, **options)
        assert cut["input_ids"] == full["input_ids"][:max_len]
        assert cut["labels"] == full["labels"][:max_len]


def test_train_on_last_keeps_only_the_final_turn(template_tokenizer, primary):
    tok, options = template_tokenizer("qwen"), primary["qwen"][2]
    full = encode(MESSAGES, tok, "qwen", **options)
    last = encode(MESSAGES, tok, "qwen", train_on="last", **options)
    assert last["input_ids"] == full["input_ids"]
    supervised = [i for i, label in enumerate(last["labels"]) if label != IGNORE_INDEX]
    assert tok.decode([last["input_ids"][i] for i in supervised]) == "One, two, three.<|im_end|>"
    assert all(full["labels"][i] == last["labels"][i] for i in supervised)


def test_bad_option_values_are_refused(template_tokenizer):
    tok = template_tokenizer("qwen")
    with pytest.raises(ValueError, match="train_on"):
        encode(MESSAGES, tok, "qwen", train_on="first")
    with pytest.raises(ValueError, match="special_text"):
        encode(MESSAGES, tok, "qwen", special_text="drop")
    with pytest.raises(ValueError, match="unknown template_name"):
        render(MESSAGES, "vicuna")


# template -> the stop tokens (text) that must come back as ids on its tokenizer, in order
STOP_TOKENS = {
    "qwen": ["<|im_end|>", "<|endoftext|>"], "qwen3": ["<|im_end|>", "<|endoftext|>"],
    "etude": ["<|im_end|>", "<|endoftext|>"], "yi": ["<|im_end|>", "<|endoftext|>"],
    "gemma": ["<end_of_turn>", "<eos>"], "gemma3": ["<end_of_turn>", "<eos>"], "phi3": ["<|end|>", "<|endoftext|>"],
    "deepseek": ["<｜end▁of▁sentence｜>"], "deepseek3": ["<｜end▁of▁sentence｜>"],
    "llama3": ["<|eot_id|>", "<|end_of_text|>"],
}
KNOWN_IDS = {"qwen": [151645, 151643], "yi": [7, 2], "gemma": [107, 1], "phi3": [32007, 32000], "deepseek3": [1]}


@pytest.mark.parametrize("template_name", list(TEMPLATES))
def test_stop_token_ids(template_name, template_tokenizer):
    tok = template_tokenizer(template_name)
    ids = stop_token_ids(tok, template_name)
    assert ids == tok.convert_tokens_to_ids(STOP_TOKENS[template_name])
    assert ids == KNOWN_IDS.get(template_name, ids)
    # the first stop token is the end-of-turn that encode() supervises at the end of every assistant turn
    enc = encode(MESSAGES[:2], tok, template_name)
    supervised = [t for t, label in zip(enc["input_ids"], enc["labels"]) if label != IGNORE_INDEX]
    assert supervised[-1] == ids[0]


def test_stop_token_ids_refuses_a_tokenizer_without_them(tokenizers):
    with pytest.raises(ValueError, match="none of the stop tokens"):
        stop_token_ids(tokenizers("deepseek-v3"), "llama3")  # the plain DeepSeek-V3 vocabulary has no <|eot_id|>


@pytest.mark.parametrize("folder, family", [("qwen2.5", "qwen"), ("yi", "yi"), ("gemma", "gemma"),
                                            ("phi-3", "phi3"), ("deepseek-v3", "deepseek3")])
def test_detect_real_tokenizer_folders(folder, family, tokenizers, shared_assets):
    # yi and gemma ship no chat_template: the session tokenizers carry the official one (conftest)
    name, reason = detect(shared_assets / "tokenizers" / folder, tokenizer=tokenizers(folder))
    assert name == family, reason
    assert detect(tokenizers(folder))[0] == family


def test_detect_loads_the_tokenizer_from_a_folder(shared_assets):
    assert detect(shared_assets / "tokenizers" / "qwen2.5")[0] == "qwen"


@pytest.mark.parametrize("official_file, tokenizer_name, family", [
    ("qwen1.5-chat.jinja", "qwen2.5", "qwen"), ("qwen2.5-instruct.jinja", "qwen2.5", "qwen"),
    ("qwen3.jinja", "qwen2.5", "qwen3"), ("yi-chat.jinja", "yi", "yi"), ("gemma-it.jinja", "gemma", "gemma"),
    ("phi-3.5-mini-instruct.jinja", "phi-3", "phi3"),
    ("deepseek-llm-chat.jinja", "deepseek-v3", "deepseek"), ("deepseek-v3.jinja", "deepseek-v3", "deepseek3"),
    ("deepseek-r1.jinja", "deepseek-v3", "deepseek3"), ("llama-3-instruct.jinja", "llama3-on-deepseek-v3", "llama3"),
])
def test_detect_every_official_template(official_file, tokenizer_name, family, tokenizers, official, swapped):
    tok = tokenizers(tokenizer_name)
    with swapped(tok, official(official_file)):
        name, reason = detect(tok)
    assert name == family, reason
    assert f"renders the probe conversations exactly as our {family!r} template" in reason


def test_detect_keeps_an_own_template_that_differs_from_the_family(tokenizers, official, swapped):
    """Phi-3-mini-4k's April template writes <s> first, which ours (Phi-3.5's) does not: it is kept as it is."""
    with swapped(tokenizers("phi-3"), official("phi-3-mini-4k-instruct.jinja")) as tok:
        name, reason = detect(tok)
    assert name == "own", reason
    assert "closest family 'phi3' differs" in reason and "<s><|user|>" in reason


@pytest.mark.parametrize("tokenizer_name, family", [("qwen2.5", "qwen"), ("yi", "yi"), ("gemma", "gemma"),
                                                    ("phi-3", "phi3"), ("deepseek-v3", "deepseek3")])
def test_detect_falls_back_to_the_vocabulary(tokenizer_name, family, tokenizers, swapped):
    tok = tokenizers(tokenizer_name)
    with swapped(tok, None):
        name, reason = detect(tok)
    assert name == family and "has no chat_template" in reason and "vocabulary" in reason


def test_detect_uses_config_model_type_for_a_model_without_template(tmp_path, tokenizers, swapped):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3"}), encoding="utf-8")
    with swapped(tokenizers("qwen2.5"), None) as tok:
        name, reason = detect(tmp_path, tokenizer=tok)
    assert name == "qwen3" and "model_type='qwen3'" in reason


def test_detect_gives_gemma3_for_its_model_types(tmp_path, tokenizers, swapped):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3_text"}), encoding="utf-8")
    with swapped(tokenizers("gemma"), None) as tok:
        assert detect(tmp_path, tokenizer=tok)[0] == "gemma3"


def test_detect_never_swaps_a_models_own_template_for_its_model_types_family(tmp_path, tokenizers):
    """config.json says qwen3, but the folder's tokenizer carries Qwen2.5's template: that is what serves it."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3"}), encoding="utf-8")
    name, reason = detect(tmp_path, tokenizer=tokenizers("qwen2.5"))
    assert name == "qwen" and "You are Qwen" in reason


@pytest.mark.parametrize("template_name", list(TEMPLATES))
def test_apply_to_tokenizer_renders_like_render(template_name, template_tokenizer, primary, swapped):
    tok, options = template_tokenizer(template_name), primary[template_name][2]
    conversations = [MESSAGES, MESSAGES[:3]]
    if get_template(template_name).supports_system:
        conversations.append([SYSTEM] + MESSAGES)
    with swapped(tok, None):
        apply_to_tokenizer(tok, template_name, **options)
        for messages in conversations:
            for gen in (False, True):
                want = render(messages, template_name, gen, tokenizer=tok, **options)
                assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen) == want
        if template_name != "etude":  # Etude's ChatML has no marker of its own (config.json model_type names it)
            assert detect(tok)[0] == template_name


def test_apply_to_tokenizer_keeps_call_time_options(template_tokenizer, swapped):
    """A saved Qwen3 tokenizer must still honour enable_thinking=False at inference."""
    tok = template_tokenizer("qwen3")
    with swapped(tok, None):
        apply_to_tokenizer(tok, "qwen3")
        for thinking in (True, False):
            want = render(MESSAGES[:1], "qwen3", True, tokenizer=tok, enable_thinking=thinking)
            got = tok.apply_chat_template(MESSAGES[:1], tokenize=False, add_generation_prompt=True,
                                          enable_thinking=thinking)
            assert got == want
        assert tok.apply_chat_template(MESSAGES[:1], tokenize=False, add_generation_prompt=True).endswith(
            "<|im_start|>assistant\n")  # thinking on when not given, as in the official template


def test_show_sample_wraps_each_supervised_run_and_keeps_the_rest(template_tokenizer, primary):
    tok, options = template_tokenizer("qwen"), primary["qwen"][2]
    enc = encode(MESSAGES, tok, "qwen", **options)
    shown = show_sample(enc["input_ids"], enc["labels"], tok)
    assert shown.count("[[") == shown.count("]]") == 2
    assert "<|im_start|>assistant\n[[Hello, how can I help?<|im_end|>]]\n<|im_start|>user\n" in shown
    assert shown.endswith("[[One, two, three.<|im_end|>]]\n")
    assert shown.replace("[[", "").replace("]]", "") == tok.decode(enc["input_ids"])
    runs = supervised_runs(enc["input_ids"], enc["labels"], tok)
    assert [supervised for _, supervised in runs] == [False, True, False, True, False]
    assert show_sample(enc["input_ids"], enc["labels"], tok, "<", ">").count("<One, two") == 1


@pytest.mark.parametrize("template_name", list(TEMPLATES))
def test_template_facts_come_from_its_text_and_options(template_name):
    """bos_in_template is read off the jinja, default_system off the render options: one source for each."""
    template = get_template(template_name)
    assert template.bos_in_template == ("{{- bos_token }}" in template.jinja or "{{ bos_token }}" in template.jinja)
    assert template.default_system == template.options.get("default_system")
    assert (template_name in ("gemma", "gemma3", "deepseek", "deepseek3", "llama3")) == template.bos_in_template


@pytest.mark.parametrize("official_file, family", [
    ("qwen1.5-chat.jinja", "qwen"), ("qwen2.5-instruct.jinja", "qwen"), ("qwen3.jinja", "qwen3"),
    ("yi-chat.jinja", "yi"), ("gemma-it.jinja", "gemma"), ("phi-3.5-mini-instruct.jinja", "phi3"),
    ("deepseek-llm-chat.jinja", "deepseek"), ("deepseek-v3.jinja", "deepseek3"), ("deepseek-r1.jinja", "deepseek3"),
    ("llama-3-instruct.jinja", "llama3")])
def test_detect_guesses_the_family_from_the_registry_markers(official_file, family, official):
    """The marker guess reads only the registry's detect_markers: the longest matching set wins (Qwen3's ChatML
    with thinking over Qwen's over Yi's bare ChatML; Gemma 3's over Gemma's)."""
    assert _from_markers(official(official_file)) == family


def test_detect_marker_guess_prefers_the_most_specific_family():
    assert _from_markers(get_template("gemma3").jinja) == "gemma3"
    assert _from_markers(get_template("qwen3").jinja) == "qwen3"
    assert _from_markers("no markers here") is None
