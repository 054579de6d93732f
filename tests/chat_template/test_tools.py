"""Tool calling: templates with an official tool rendering render tools, calls and results token-for-token as the
official template does through transformers' apply_chat_template, and supervise the assistant's calls but never
the tool results or the tool schemas; templates without one refuse tool data."""
from __future__ import annotations

import pytest

from chat_template import TEMPLATES, ChatFormatError, encode, render
from tests.chat_template.test_golden import QWEN25_SYSTEM, assert_supervision, supervised_runs

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Local time", "parameters": {"type": "object", "properties": {}}}}


def u(text):
    return {"role": "user", "content": text}


def call(*calls, content=""):
    """An assistant turn that calls tools. utils.data turns OpenAI's `content: null` here into "": transformers
    drops None-valued keys before rendering, and Qwen3's official template then fails on the missing content."""
    return {"role": "assistant", "content": content,
            "tool_calls": [{"type": "function", "function": {"name": n, "arguments": args}} for n, args in calls]}


def result(text):
    return {"role": "tool", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


TOOL_CONVERSATIONS = {
    "one_call": ([u("Weather in Paris?"), call(("get_weather", {"city": "Paris"})), result('{"temp_c": 21}'),
                  a("It is 21 °C in Paris.")], [WEATHER]),
    "parallel_calls": ([u("Weather and time in Oslo?"),
                        call(("get_weather", {"city": "Oslo"}), ("get_time", {})),
                        result('{"temp_c": 3}'), result('{"time": "09:14"}'), a("3 °C, and it is 09:14.")],
                       [WEATHER, TIME]),
    "text_beside_call": ([{"role": "system", "content": "Be brief."}, u("Weather in Rome?"),
                          call(("get_weather", {"city": "Rome"}), content="Let me look that up."),
                          result('{"temp_c": 25}'), a("25 °C.")], [WEATHER]),
    "two_rounds": ([u("Paris?"), call(("get_weather", {"city": "Paris"})), result('{"temp_c": 21}'), a("21 °C."),
                    u("天气 in 北京?"), call(("get_weather", {"city": "北京"})), result('{"temp_c": 30}'),
                    a("30 °C.")], [WEATHER]),
    "ends_on_call": ([u("Weather in Lima?"), call(("get_weather", {"city": "Lima"}))], [WEATHER]),
    "tools_no_call": ([u("Hi!"), a("Hello! Ask me about the weather.")], [WEATHER]),
}
# ours -> (official jinja, tokenizer, options for ours)
TOOL_PAIRINGS = {"qwen": ("qwen2.5-instruct.jinja", "qwen2.5", {"default_system": QWEN25_SYSTEM}),
                 "qwen3": ("qwen3.jinja", "qwen2.5", {})}
END = "<|im_end|>"


def assistant_pieces(text: str, header="<|im_start|>assistant") -> list[str]:
    """What follows each assistant header up to its end-of-turn token (a trailing generation prompt has none)."""
    pieces, at = [], 0
    while (start := text.find(header, at)) >= 0 and (end := text.find(END, start)) >= 0:
        pieces.append(text[start + len(header):end + len(END)])
        at = end
    return pieces


def test_tool_templates_are_the_ones_registered():
    assert sorted(t.name for t in TEMPLATES.values() if t.supports_tools) == sorted(TOOL_PAIRINGS)


@pytest.mark.parametrize("gen", [False, True], ids=["nogen", "gen"])
@pytest.mark.parametrize("conv_name", list(TOOL_CONVERSATIONS))
@pytest.mark.parametrize("template_name", list(TOOL_PAIRINGS))
def test_tool_rendering_equals_official_and_supervises_calls_only(template_name, conv_name, gen, tokenizers,
                                                                   official):
    official_file, tok_name, options = TOOL_PAIRINGS[template_name]
    tok, official_jinja = tokenizers(tok_name), official(official_file)
    messages, tools = TOOL_CONVERSATIONS[conv_name]
    want_text = tok.apply_chat_template(messages, tools=tools, chat_template=official_jinja, tokenize=False,
                                        add_generation_prompt=gen)
    want_ids = tok.apply_chat_template(messages, tools=tools, chat_template=official_jinja,
                                       add_generation_prompt=gen)["input_ids"]
    assert render(messages, template_name, gen, tokenizer=tok, tools=tools, **options) == want_text
    enc = encode(messages, tok, template_name, add_generation_prompt=gen, tools=tools, **options)
    assert enc["input_ids"] == want_ids

    offsets = tok(want_text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    pieces = assistant_pieces(want_text)
    assert len(pieces) == sum(m["role"] == "assistant" for m in messages)
    assert_supervision(enc, want_text, offsets, pieces, tok.convert_tokens_to_ids(END))
    covered = [want_text[offsets[first][0]:offsets[last][1]] for first, last in supervised_runs(enc["labels"])]
    for message, got in zip([m for m in messages if m["role"] == "assistant"], covered):
        for tool_call in message.get("tool_calls", []):  # the call is supervised, as JSON the template writes
            assert f'<tool_call>\n{{"name": "{tool_call["function"]["name"]}", "arguments": ' in got
    assert not any("<tool_response>" in got or "# Tools" in got for got in covered)  # results, schemas: context


@pytest.mark.parametrize("template_name", [n for n, t in TEMPLATES.items() if not t.supports_tools])
def test_template_without_tool_rendering_refuses_tool_data(template_name, tokenizers):
    tok = tokenizers("qwen2.5")  # the refusal comes before any tokenization
    messages, tools = TOOL_CONVERSATIONS["one_call"]
    for case in [dict(messages=messages, tools=tools), dict(messages=messages, tools=None),
                 dict(messages=TOOL_CONVERSATIONS["tools_no_call"][0], tools=tools)]:
        with pytest.raises(ChatFormatError, match=f"template '{template_name}' has no tool rendering"):
            encode(case["messages"], tok, template_name, tools=case["tools"])
        with pytest.raises(ChatFormatError, match="has no tool rendering"):
            render(case["messages"], template_name, tokenizer=tok, tools=case["tools"])


def test_deepseek_v3_official_template_has_no_usable_tool_rendering(tokenizers, official):
    """Why deepseek3 refuses tool data: through transformers, DeepSeek-V3's template cannot write a tool call
    (`content: None` is dropped before rendering, and an empty content drops the call), and never writes schemas."""
    tok, v3 = tokenizers("deepseek-v3"), official("deepseek-v3.jinja")
    messages, tools = TOOL_CONVERSATIONS["one_call"]
    with pytest.raises(Exception, match="content"):
        tok.apply_chat_template([messages[0], {**messages[1], "content": None}], tools=tools, chat_template=v3,
                                tokenize=False)
    text = tok.apply_chat_template(messages[:2], tools=tools, chat_template=v3, tokenize=False)
    assert "get_weather" not in text


def test_special_text_in_tool_json_is_refused_even_with_keep(tokenizers):
    tok = tokenizers("qwen2.5")
    # the content's special text alone would be kept as plain text; the call's may not be
    messages = [u("Weather? <|im_end|>"), call(("get_weather", {"city": "Paris<|im_end|>"})), a("Sunny.")]
    for special_text in ("error", "keep"):
        with pytest.raises(ChatFormatError, match="message 1 .* field 'tool_calls' contains the special-token"):
            encode(messages, tok, "qwen", tools=[WEATHER], special_text=special_text)
    bad_schema = {"type": "function", "function": {**WEATHER["function"], "description": "ends <|im_end|>"}}
    with pytest.raises(ChatFormatError, match="field 'tools' contains the special-token"):
        encode([u("Hi"), a("Hello")], tok, "qwen", tools=[bad_schema], special_text="keep")
