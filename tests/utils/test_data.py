"""utils.data: the three record shapes load as conversations; tool-calling records (OpenAI and ShareGPT) reach the
template's official tool rendering with the call supervised; malformed input is a DataError naming file:line and
field (exit 2 from the command line), skippable with invalid_records=skip; samples left without supervised tokens
are dropped and counted, and a run with none refuses to train."""
from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

import main_train

from chat_template import IGNORE_INDEX, get_template
from tests.conftest import REPO, TOY_RECORDS, shared_path, train_argv, write_jsonl
from utils.data import DataError, build_datasets, encode_conversations, load_conversations

OFFICIAL = {"qwen": "qwen2.5-instruct.jinja", "qwen3": "qwen3.jinja"}
QWEN25_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
SCHEMA = {"name": "get_weather", "description": "Weather of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
OPENAI_TOOL_RECORD = {
    "tools": [{"type": "function", "function": SCHEMA}],
    "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "{\"temp_c\": 21}"},
        {"role": "assistant", "content": "It is 21 °C."}]}
GLAIVE_STYLE_RECORD = {
    "tools": json.dumps([SCHEMA]),
    "conversations": [{"from": "human", "value": "Weather in Paris?"},
                      {"from": "function_call", "value": json.dumps({"name": "get_weather",
                                                                     "arguments": {"city": "Paris"}})},
                      {"from": "observation", "value": "{\"temp_c\": 21}"},
                      {"from": "gpt", "value": "It is 21 °C."}]}
# what serving stacks hand the official template for that record: arguments parsed, content "" beside the call
OPENAI_TOOL_MESSAGES = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}, "id": "call_1"}]},
    {"role": "tool", "content": "{\"temp_c\": 21}", "name": "get_weather", "tool_call_id": "call_1"},
    {"role": "assistant", "content": "It is 21 °C."}]


@pytest.fixture(scope="module")
def qwen_tok():
    from utils.tokenizer import load_tokenizer
    return load_tokenizer(str(shared_path("tokenizers", "qwen2.5")))


def official_ids(tok, template_name, conversation):
    official = shared_path("chat_templates", OFFICIAL[template_name]).read_text(encoding="utf-8")
    # only the tool rendering is compared here: the official text gets our template's default system prompt
    official = official.replace(QWEN25_SYSTEM, get_template(template_name).options.get("default_system", ""))
    return tok.apply_chat_template(conversation.messages, tools=conversation.tools, chat_template=official)["input_ids"]


def supervised_texts(tok, row) -> list[str]:
    runs, run = [], []
    for token, label in zip(row["input_ids"] + [None], row["labels"] + [IGNORE_INDEX]):
        if label != IGNORE_INDEX:
            run.append(token)
        elif run:
            runs, run = runs + [tok.decode(run)], []
    return runs


def test_openai_tool_record_keeps_tools_and_calls_and_trains_the_call(qwen_tok, tmp_path):
    bare = {**OPENAI_TOOL_RECORD, "tools": [SCHEMA]}  # a bare schema is wrapped as OpenAI's shape
    conversations = load_conversations(write_jsonl(tmp_path / "tools.jsonl", [OPENAI_TOOL_RECORD, bare]))
    for conversation in conversations:
        assert conversation.messages == OPENAI_TOOL_MESSAGES
        assert conversation.tools == [{"type": "function", "function": SCHEMA}]
    dataset, _ = encode_conversations(conversations[:1], qwen_tok, "qwen", max_len=1024)
    assert dataset[0]["input_ids"] == official_ids(qwen_tok, "qwen", conversations[0])
    calls, answer = supervised_texts(qwen_tok, dataset[0])
    assert calls == '\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
    assert answer == "It is 21 °C.<|im_end|>"


@pytest.mark.parametrize("template_name", ["qwen", "qwen3"])
def test_glaive_sharegpt_file_renders_calls_and_schemas_as_the_official_template(template_name, qwen_tok, tmp_path):
    lines = shared_path("data", "multiturn", "glaive_toolcall_en_demo.jsonl").read_text(encoding="utf-8")
    data = tmp_path / "glaive20.jsonl"
    data.write_text("".join(lines.splitlines(keepends=True)[:20]), encoding="utf-8")
    conversations = load_conversations(data)
    dataset, summary = encode_conversations(conversations, qwen_tok, template_name, max_len=4096)
    assert summary.kept == 20
    n_calls = 0
    for conversation, row in zip(conversations, dataset):
        assert row["input_ids"] == official_ids(qwen_tok, template_name, conversation)
        text = qwen_tok.decode(row["input_ids"])
        for tool in conversation.tools or []:  # every schema is in the prompt, as OpenAI's shape
            assert json.dumps({"type": "function", "function": tool["function"]}, ensure_ascii=False) in text
        supervised = "".join(supervised_texts(qwen_tok, row))
        calls = [c for m in conversation.messages for c in m.get("tool_calls", [])]
        for call in calls:  # the call is supervised, its result and the schemas are not
            assert f'{{"name": "{call["function"]["name"]}", "arguments": ' in supervised
        assert ("<tool_response>" in text) == bool(calls)
        assert "<tool_response>" not in supervised and "# Tools" not in supervised
        n_calls += len(calls)
    assert n_calls >= 5


BAD_TOOL_RECORDS = {
    "function_call not JSON": (
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "function_call", "value": "{\"name\": oops"}]},
        "field 'conversations[1].value' is not valid JSON"),
    "tool_calls not a list": (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": "f()"}]},
        "field 'messages[1].tool_calls' must be a non-empty list of tool calls"),
    "arguments not an object": (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": "f", "arguments": "[1, 2]"}}]}]},
        "field 'messages[1].tool_calls[0].function.arguments' must be a JSON object, got list"),
    "call without name": (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [{"arguments": {}}]}]},
        "field 'messages[1].tool_calls[0].name' is missing"),
    "tools not a list": ({**OPENAI_TOOL_RECORD, "tools": "{\"name\": \"f\"}"},
                         "field 'tools' must be a list of function schemas, got dict"),
    "tools not JSON": ({**OPENAI_TOOL_RECORD, "tools": "[{"}, "field 'tools' is not valid JSON"),
    "schema without name": ({**OPENAI_TOOL_RECORD, "tools": [{"description": "x"}]},
                            "field 'tools[0]' must be a function schema with a 'name'"),
    "null content without calls": (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]},
        "field 'messages[1].content' is missing"),
    "calls on a user turn": (
        {"messages": [{"role": "user", "content": "hi", "tool_calls": []}, {"role": "assistant", "content": "x"}]},
        "field 'messages[0].tool_calls': only assistant turns make tool calls"),
    "result without a call": (
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "ok"},
                           {"from": "observation", "value": "{}"}, {"from": "gpt", "value": "done"}]},
        "a tool result must follow an assistant turn with tool calls"),
}


@pytest.mark.parametrize("case", list(BAD_TOOL_RECORDS))
def test_bad_tool_fields_fail_with_file_line_and_field(case, tmp_path):
    record, message = BAD_TOOL_RECORDS[case]
    good = OPENAI_TOOL_RECORD if "messages" in record else GLAIVE_STYLE_RECORD  # the file's shape comes from line 1
    data = write_jsonl(tmp_path / "bad.jsonl", [good, record])
    with pytest.raises(DataError) as err:
        load_conversations(data)
    assert str(err.value).startswith(f"{data}:2: ") and message in str(err.value)


def test_tool_data_on_a_template_without_tool_rendering_stops_with_file_line(qwen_tok, tmp_path):
    plain = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    data = write_jsonl(tmp_path / "tools.jsonl", [plain, OPENAI_TOOL_RECORD])
    for invalid_records in ("error", "skip"):  # a setup error, not a bad record: never skipped
        conversations = load_conversations(data, invalid_records)
        with pytest.raises(DataError, match=f"^{data}:2: .*template 'yi' has no tool rendering"):
            encode_conversations(conversations, qwen_tok, "yi", max_len=256, invalid_records=invalid_records)


def _args(data, invalid_records):
    return SimpleNamespace(train_data_path=str(data), eval_data_path=None, score_data_path=None, eval_ratio=0,
                           seed=0, max_len=256, train_on="all", special_text="error", invalid_records=invalid_records)


def test_skip_drops_and_reports_invalid_json_lines_and_special_token_text(qwen_tok, tmp_path):
    data = tmp_path / "scraped.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n{"instruction": oops}\n'
                    '{"instruction": "a <|im_end|> b", "output": "c"}\n{"instruction": "d", "output": "e"}\n',
                    encoding="utf-8")
    with pytest.raises(DataError, match=f"^{data}:2: invalid JSON"):
        build_datasets(_args(data, "error"), qwen_tok, "qwen", log=lambda _: None)
    logged = []
    train, _, _ = build_datasets(_args(data, "skip"), qwen_tok, "qwen", log=logged.append)
    assert len(train) == 2
    log = "\n".join(logged)
    assert "2 of 3 samples" in log and "skipped 1 of 3 invalid" in log and "skipped 2 invalid records" in log
    assert f"{data}:2: invalid JSON" in log and f"{data}:3: message 0 (user) field 'content' contains" in log


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_utf16_or_binary_file_stops_with_not_utf8_error(suffix, tmp_path):
    record = {"instruction": "a", "output": "b"}
    text = json.dumps([record]) if suffix == ".json" else json.dumps(record) + "\n"
    gzip_like = b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4
    for name, content in [("utf16", text.encode("utf-16")), ("utf16le", text.encode("utf-16-le")),
                          ("binary", gzip_like), ("nul", b'{"instruction": "a\x00", "output": "b"}\n')]:
        data = tmp_path / f"{name}{suffix}"
        data.write_bytes(content)
        for invalid_records in ("error", "skip"):
            with pytest.raises(DataError, match=f"^{data}(:1)?: not UTF-8 text"):
                load_conversations(data, invalid_records)
    bom = tmp_path / f"bom{suffix}"
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))  # UTF-8 with a byte-order mark is UTF-8
    assert len(load_conversations(bom)) == 1


def test_deeply_nested_json_is_a_data_error_naming_its_line(tmp_path):
    good = json.dumps({"instruction": "a", "output": "b"})
    data = tmp_path / "deep.jsonl"
    data.write_text(good + "\n" + "[" * 100_000 + "]" * 100_000 + "\n" + good + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"^{data}:2: invalid JSON: nested too deeply"):
        load_conversations(data)
    skipped = []
    assert len(load_conversations(data, "skip", skipped)) == 2 and skipped[0].startswith(f"{data}:2:")
    nested_json = tmp_path / "deep.json"
    nested_json.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    with pytest.raises(DataError, match="nested too deeply"):
        load_conversations(nested_json)


def test_load_conversations_reads_the_three_shapes(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"instruction": "i", "input": "x", "output": "o", "system": "s"}])
    write_jsonl(tmp_path / "b.jsonl", [{"conversations": [{"from": "human", "value": "h"},
                                                          {"from": "gpt", "value": "g"}], "system": "s"}])
    (tmp_path / "c.json").write_text(json.dumps([{"messages": [{"role": "user", "content": "u"},
                                                              {"role": "assistant", "content": "a"}]}]))
    convs = load_conversations([str(tmp_path)])
    assert [c.messages for c in convs] == [
        [{"role": "system", "content": "s"}, {"role": "user", "content": "i\nx"},
         {"role": "assistant", "content": "o"}],
        [{"role": "system", "content": "s"}, {"role": "user", "content": "h"}, {"role": "assistant", "content": "g"}],
        [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]]
    assert convs[0].source.endswith("a.jsonl:1") and convs[2].source.endswith("c.json:item 0")


BAD_DATA = {
    "invalid_json": ('{"instruction": "a", "output": "b"}\n{"instruction": oops}\n', 2, "invalid JSON"),
    "missing_key": ('{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n', 2, "field 'output' is missing"),
    "unknown_role": ('{"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}\n', 1,
                     "field 'messages[1].role' has unknown role 'bot'"),
    "empty_content": ('{"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "b"}]}\n',
                      1, "field 'messages[0].content' is empty"),
    "non_string": ('{"conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "b"}]}\n', 1,
                   "field 'conversations[0].value' must be a string"),
    "alternation": ('{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, '
                    '{"role": "assistant", "content": "c"}]}\n', 1, "broken alternation"),
    "special_text": ('{"instruction": "a <|im_end|> b", "output": "c"}\n', 1, "special-token text '<|im_end|>'"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_malformed_data_fails_with_file_line_and_field(case, tiny_model, tmp_path):
    text, line, message = BAD_DATA[case]
    data = tmp_path / "bad.jsonl"
    data.write_text(text, encoding="utf-8")
    out = tmp_path / "o"
    with pytest.raises(DataError) as err:
        main_train.main(train_argv(tiny_model("qwen"), data, out, "--template_name", "qwen"))
    assert f"{data}:{line}:" in str(err.value) and message in str(err.value)
    assert not out.exists()


def test_malformed_data_exits_nonzero_from_the_command_line(tiny_model, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"instruction": "a"}\n', encoding="utf-8")
    proc = subprocess.run([sys.executable, "main_train.py", *train_argv(tiny_model("qwen"), data, tmp_path / "o")],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"error: {data}:1: field 'output' is missing" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o").exists()


def test_samples_without_supervised_tokens_are_dropped_and_counted(tiny_model, tmp_path, capsys):
    long_prompt = {"instruction": "x " * 200, "output": "answer"}
    data = write_jsonl(tmp_path / "d.jsonl", TOY_RECORDS + [long_prompt] * 3)
    main_train.main(train_argv(tiny_model("qwen"), data, tmp_path / "o", "--template_name", "qwen",
                               "--dry_run", "true"))
    assert "dropped 3 of 11: no assistant tokens left after truncation to 64" in capsys.readouterr().out


def test_all_samples_unsupervised_refuses_to_train(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "x " * 200, "output": "a"}] * 4)
    with pytest.raises(DataError, match="no usable samples"):
        main_train.main(train_argv(tiny_model("qwen"), data, tmp_path / "o", "--template_name", "qwen"))
    assert not (tmp_path / "o").exists()

