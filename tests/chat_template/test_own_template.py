"""The model's own template (template_name "own", chat_template/own.py) on official templates from outside our
families (golden/, SOURCES.md) and on our families' official ones: token-exact with `apply_chat_template`, the loss
on what the assistant writes plus its end-of-turn token, and a clear refusal where the mask cannot be derived."""
from __future__ import annotations

import pytest

from chat_template import IGNORE_INDEX, ChatFormatError, OwnTemplateError, encode, own, stop_token_ids
from tests.chat_template.conftest import GOLDEN_DIR, TOKENIZER_DIR, load_tokenizer


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


SYSTEM = {"role": "system", "content": "Be brief."}
TWO_TURNS = [u("Hi!"), a("Hello! How can I help?"), u("What is 2+2?"), a("4")]
SYSTEM_ONE_TURN = [SYSTEM, u("Name a colour."), a("Blue.")]

# golden file -> (special tokens for the DeepSeek-V3 stand-in tokenizer, the end of turn own.py must find)
OUTSIDE_FAMILIES = {
    "meta-llama-Llama-3.2-3B-Instruct.jinja": (
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
         "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}, "<|eot_id|>"),
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": (
        {"bos_token": "<s>", "eos_token": "</s>", "additional_special_tokens": ["[INST]", "[/INST]"]}, "</s>"),
    "ibm-granite-granite-3.3-2B-Instruct.jinja": (
        {"eos_token": "<|end_of_text|>", "additional_special_tokens": ["<|start_of_role|>", "<|end_of_role|>"]},
        "<|end_of_text|>"),
}


@pytest.fixture(scope="module")
def outside(shared_assets):
    """outside(golden file) -> the DeepSeek-V3 tokenizer (one copy, loaded once) with that template's control
    tokens, bos/eos and chat_template."""
    tok = load_tokenizer(TOKENIZER_DIR / "deepseek-v3")
    tok.add_special_tokens({"additional_special_tokens": sorted(
        {t for specials, _ in OUTSIDE_FAMILIES.values()
         for t in [*specials["additional_special_tokens"], specials["eos_token"], specials.get("bos_token")] if t})})

    def get(file_name):
        specials = OUTSIDE_FAMILIES[file_name][0]
        tok.bos_token, tok.eos_token = specials.get("bos_token"), specials["eos_token"]
        tok.chat_template = (GOLDEN_DIR / file_name).read_text(encoding="utf-8")
        return tok
    return get


def supervised_texts(enc, tok) -> list[str]:
    """The decoded text of each contiguous supervised run."""
    runs, current = [], []
    for token, label in zip(enc["input_ids"], enc["labels"] + [IGNORE_INDEX]):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            runs.append(tok.decode(current))
            current = []
    if current:
        runs.append(tok.decode(current))
    return runs


def assert_token_exact_and_masked(messages, tok, end_of_turn):
    enc = encode(messages, tok, "own")
    assert enc["input_ids"] == tok.apply_chat_template(messages, tokenize=True)["input_ids"]
    want = [m["content"].strip() + end_of_turn for m in messages if m["role"] == "assistant"]
    assert [t.strip() for t in supervised_texts(enc, tok)] == want


@pytest.mark.parametrize("file_name", list(OUTSIDE_FAMILIES))
def test_own_template_outside_our_families_is_token_exact_with_assistant_only_loss(file_name, outside):
    tok, end_of_turn = outside(file_name), OUTSIDE_FAMILIES[file_name][1]
    analysis = own.analyze(tok)
    assert (analysis.mask_method, analysis.end_of_turn) == (own.PREFIX_RENDERS, end_of_turn)
    assert stop_token_ids(tok, "own")[0] == tok.convert_tokens_to_ids(end_of_turn)
    assert_token_exact_and_masked(TWO_TURNS, tok, end_of_turn)
    last = encode(TWO_TURNS, tok, "own", train_on="last")
    assert [t.strip() for t in supervised_texts(last, tok)] == ["4" + end_of_turn]


@pytest.mark.parametrize("file_name", [f for f in OUTSIDE_FAMILIES if "Mistral" not in f])
def test_own_template_with_a_system_message(file_name, outside):
    assert_token_exact_and_masked([SYSTEM] + TWO_TURNS, outside(file_name), OUTSIDE_FAMILIES[file_name][1])


def test_own_template_that_moves_the_system_message_is_refused_not_mislabelled(outside):
    """Mistral-Nemo writes the system message into the LAST user turn only: an earlier turn is trained in a context
    that serving it never shows, so the conversation is refused, naming why."""
    tok = outside("mistralai-Mistral-Nemo-Instruct-2407.jinja")
    for messages in ([SYSTEM] + TWO_TURNS, SYSTEM_ONE_TURN):
        with pytest.raises(ChatFormatError, match="rewrites earlier turns"):
            encode(messages, tok, "own")


def test_own_template_that_renders_earlier_turns_differently_is_refused(tokenizers, official, swapped):
    """Qwen3's template gives only the turn after the last user message a <think> block: an earlier turn would be
    trained without the block that the model writes when it is served. Refused as a template, saying why."""
    with swapped(tokenizers("qwen2.5"), official("qwen3.jinja")) as tok:
        with pytest.raises(OwnTemplateError, match="rewrites earlier turns"):
            own.analyze(tok)


@pytest.mark.parametrize("template_name", ["qwen", "gemma3", "phi3", "llama3"])
def test_own_path_on_a_family_template_gives_the_familys_ids_and_labels(template_name, primary, tokenizers,
                                                                        official, swapped):
    tokenizer_name, official_file, options = primary[template_name]
    with swapped(tokenizers(tokenizer_name), official(official_file)) as tok:
        for messages in (TWO_TURNS, [SYSTEM] + TWO_TURNS):
            assert encode(messages, tok, "own") == encode(messages, tok, template_name, **options)


def test_own_template_with_generation_markers_uses_them(tokenizers, swapped):
    from chat_template import get_template
    with swapped(tokenizers("qwen2.5"), get_template("yi").jinja) as tok:
        assert own.analyze(tok).mask_method == own.GENERATION_MARKERS
        assert encode(TWO_TURNS, tok, "own") == encode(TWO_TURNS, tok, "yi")


def test_own_template_without_an_end_of_turn_token_is_refused(tokenizers, swapped):
    plain = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    with swapped(tokenizers("qwen2.5"), plain) as tok:
        with pytest.raises(OwnTemplateError, match="no end-of-turn token"):
            own.analyze(tok)
        with pytest.raises(OwnTemplateError, match="no end-of-turn token"):
            encode(TWO_TURNS, tok, "own")


def test_own_template_needs_a_template(tokenizers, swapped):
    with swapped(tokenizers("yi"), None) as tok:
        with pytest.raises(OwnTemplateError, match="has no chat_template"):
            own.analyze(tok)


TOOL_CALL = [u("Weather in Paris?"),
             {"role": "assistant", "content": None, "tool_calls": [
                 {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
             {"role": "tool", "content": "sunny"}, a("It is sunny.")]


def test_own_template_without_tool_rendering_refuses_tool_data(smollm2):
    """SmolLM2's own template reads no tool_calls: it would render an empty assistant turn, so tool data is refused."""
    from utils.tokenizer import load_tokenizer as load_model_tokenizer
    tok = load_model_tokenizer(str(smollm2))
    with pytest.raises(ChatFormatError, match="no tool rendering"):
        encode(TOOL_CALL, tok, own.OWN)


def test_own_template_with_tool_rendering_accepts_tool_data(outside):
    """Llama-3.2's own template renders tool calls: the data passes the tool check (rendered by the template)."""
    tok = outside("meta-llama-Llama-3.2-3B-Instruct.jinja")
    from chat_template import supports_tools
    assert supports_tools(own.OWN, tok)
