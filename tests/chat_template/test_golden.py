"""Golden tests: every template against its family's official chat template and real tokenizer.

For each (template, official jinja, tokenizer) pairing and each conversation, with add_generation_prompt on and off:
- render() gives exactly the official template's text;
- encode()["input_ids"] is exactly `tokenizer.apply_chat_template(messages, chat_template=OFFICIAL, tokenize=True)`
  (transformers 5 returns a BatchEncoding there; its "input_ids" are compared, bos included exactly as the
  official template and tokenizer produce it);
- the supervised positions form one contiguous run per assistant message, and the text those tokens cover is that
  message's piece (content plus end-of-turn, as the official template writes it), up to leading whitespace that
  the tokenizer merges into the first content token (byte-level BPE puts the space of "Assistant: " there).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from chat_template import IGNORE_INDEX, TEMPLATES, ChatFormatError, encode, get_template, render

QWEN25_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
QWEN15_SYSTEM = "You are a helpful assistant"


def u(text):
    return {"role": "user", "content": text}


def a(text, reasoning=None):
    message = {"role": "assistant", "content": text}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    return message


def s(text):
    return {"role": "system", "content": text}


CONVERSATIONS = {
    "single": [u("Hello, who are you?"), a("I am an assistant.")],
    "multi3": [u("What is 2+2?"), a("2+2 is 4."), u("And times 3?"), a("That makes 12."),
               u("Thanks!"), a("You're welcome.")],
    "system": [s("You are a terse assistant."), u("Name a colour."), a("Blue.")],
    "empty_system": [s(""), u("Name a colour."), a("Red.")],
    "system_multi3": [s("Answer in one word."), u("Capital of France?"), a("Paris."), u("Of Japan?"),
                      a("Tokyo."), u("Of Italy?"), a("Rome.")],
    "zh_emoji": [u("你好👋！今天天气怎么样？"), a("今天阳光明媚☀️，适合出门散步🚶。"), u("谢谢😊"), a("不客气！🎉")],
    "whitespace": [u("  leading and trailing spaces  \n"), a("\n  an answer with spaces and newlines \n\n"),
                   u("\n\nnewlines first"), a("   three spaces first")],
    "empty_assistant": [u("Say nothing."), a(""), u("Now say hi."), a("hi")],
    "prompt": [u("Write a haiku about rain.")],
    "prompt_after_turns": [s("Be kind."), u("Hi!"), a("Hello! How can I help?"), u("Tell me a joke.")],
}

QWEN3_CONVERSATIONS = {
    "reasoning_last": [u("What is 17*3?"), a("51.", reasoning="17*3 = 51.")],
    "reasoning_earlier": [u("What is 1+1?"), a("2.", reasoning="\nadd one and one\n"), u("And 2+2?"),
                          a("4.", reasoning="add two and two"), u("And 3+3?"), a("6.", reasoning="three and three")],
    "reasoning_earlier_only": [u("What is 1+1?"), a("2.", reasoning="one plus one"), u("And 2+2?"), a("4.")],
    "think_inline": [u("Q1"), a("<think>\nfirst thought\n</think>\n\nA1"), u("Q2"),
                     a("<think>\nsecond thought\n</think>\n\nA2")],
    "reasoning_then_prompt": [u("What is 1+1?"), a("2.", reasoning="easy"), u("And 2+2?")],
}


@dataclass(frozen=True)
class Pairing:
    template: str            # ours
    official: str            # official jinja file in shared/assets/chat_templates
    tokenizer: str           # real tokenizer folder in shared/assets/tokenizers
    options: dict = field(default_factory=dict)       # render options for ours only
    shared_kwargs: dict = field(default_factory=dict)  # template kwargs given to both (e.g. enable_thinking)
    conversations: tuple = tuple(CONVERSATIONS)

    @property
    def id(self):
        extra = "".join(f"-{k}={v}" for k, v in self.shared_kwargs.items())
        return f"{self.template}~{self.official.removesuffix('.jinja')}{extra}"


NO_THINK_CLOSE = tuple(n for n, m in CONVERSATIONS.items() if not any("</think>" in x["content"] for x in m))
PAIRINGS = [
    Pairing("qwen", "qwen2.5-instruct.jinja", "qwen2.5", {"default_system": QWEN25_SYSTEM}),
    Pairing("qwen", "qwen1.5-chat.jinja", "qwen2.5", {"default_system": QWEN15_SYSTEM}),
    Pairing("qwen3", "qwen3.jinja", "qwen2.5", conversations=tuple(CONVERSATIONS) + tuple(QWEN3_CONVERSATIONS)),
    Pairing("qwen3", "qwen3.jinja", "qwen2.5", shared_kwargs={"enable_thinking": True},
            conversations=tuple(CONVERSATIONS) + tuple(QWEN3_CONVERSATIONS)),
    Pairing("qwen3", "qwen3.jinja", "qwen2.5", shared_kwargs={"enable_thinking": False},
            conversations=tuple(CONVERSATIONS) + tuple(QWEN3_CONVERSATIONS)),
    Pairing("yi", "yi-chat.jinja", "yi"),
    Pairing("gemma", "gemma-it.jinja", "gemma"),
    # Gemma 3's tokenizer is not available offline; Gemma 2's has the same control tokens and stands in.
    Pairing("gemma3", "google-gemma-3-it.jinja", "gemma"),
    Pairing("phi3", "phi-3.5-mini-instruct.jinja", "phi-3"),
    # deepseek-llm-chat has no tokenizer here; DeepSeek-V3's is the closest real one (same bos/eos names).
    Pairing("deepseek", "deepseek-llm-chat.jinja", "deepseek-v3"),
    Pairing("deepseek3", "deepseek-v3.jinja", "deepseek-v3"),
    # R1's template only differs by cutting '</think>' reasoning out of history (and tool-output separators).
    Pairing("deepseek3", "deepseek-r1.jinja", "deepseek-v3", conversations=NO_THINK_CLOSE),
    # No Llama-3 tokenizer is available offline: the DeepSeek-V3 tokenizer (byte-level BPE, 128k) stands in, with
    # Llama-3's header/eot tokens added as special tokens (conftest.LLAMA3_STAND_IN).
    Pairing("llama3", "llama-3-instruct.jinja", "llama3-on-deepseek-v3"),
    # Etude has no official template: its format is defined as plain ChatML without a default system, which is
    # exactly what Yi-Chat's official template writes, so that file is the reference text here.
    Pairing("etude", "yi-chat.jinja", "qwen2.5"),
]
CASES = [pytest.param(p, name, gen, id=f"{p.id}-{name}-{'gen' if gen else 'nogen'}")
         for p in PAIRINGS for name in p.conversations for gen in (False, True)]

END_OF_TURN = {"qwen": "<|im_end|>", "qwen3": "<|im_end|>", "yi": "<|im_end|>", "etude": "<|im_end|>",
               "gemma": "<end_of_turn>", "gemma3": "<end_of_turn>", "llama3": "<|eot_id|>", "phi3": "<|end|>",
               "deepseek3": "<｜end▁of▁sentence｜>", "deepseek": None}  # deepseek: the tokenizer's eos
TRIMS_CONTENT = {"gemma", "gemma3", "llama3"}


def conversation(name):
    return {**CONVERSATIONS, **QWEN3_CONVERSATIONS}[name]


def _qwen3_piece(messages, index):
    """What Qwen3's official template writes after '<|im_start|>assistant\\n' for messages[index]."""
    message = messages[index]
    content, reasoning = message["content"], message.get("reasoning_content")
    if reasoning is None:
        reasoning = ""
        if "</think>" in content:
            reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
            content = content.split("</think>")[-1].lstrip("\n")
    last_query = max(i for i, m in enumerate(messages) if m["role"] == "user")
    if index > last_query and (index == len(messages) - 1 or reasoning):
        return "<think>\n" + reasoning.strip("\n") + "\n</think>\n\n" + content.lstrip("\n") + "<|im_end|>"
    return content + "<|im_end|>"


def expected_pieces(template_name, messages, eos_token):
    """The supervised text of each assistant message: what the assistant writes, plus its end-of-turn."""
    pieces = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if template_name == "qwen3":
            pieces.append(_qwen3_piece(messages, i))
            continue
        content = message["content"].strip() if template_name in TRIMS_CONTENT else message["content"]
        pieces.append(content + (END_OF_TURN[template_name] or eos_token))
    return pieces


def supervised_runs(labels):
    """[(first, last)] index ranges of contiguous supervised positions."""
    runs, start = [], None
    for i, label in enumerate(labels + [IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = i
        elif label == IGNORE_INDEX and start is not None:
            runs.append((start, i - 1))
            start = None
    return runs


def assert_supervision(enc, text, offsets, pieces, end_id):
    """One run per piece; each run covers exactly the piece, give or take whitespace that the tokenizer merges
    into the first content token, or that an rstrip special token swallows (Phi-3's "<|end|>" takes the "\n")."""
    input_ids, labels = enc["input_ids"], enc["labels"]
    assert len(labels) == len(input_ids)
    assert all(label in (IGNORE_INDEX, tid) for label, tid in zip(labels, input_ids)), "labels not aligned"
    runs = supervised_runs(labels)
    covered = [text[offsets[first][0]:offsets[last][1]] for first, last in runs]
    assert len(runs) == len(pieces), f"supervised runs {covered!r}, expected one per assistant piece {pieces!r}"
    for (first, last), got, piece in zip(runs, covered, pieces):
        core = piece.lstrip()
        at = got.find(core)
        assert at >= 0 and not got[:at].strip() and not got[at + len(core):].strip(), \
            f"supervised {got!r}, expected {piece!r}"
        assert input_ids[last] == end_id, "a run must end on the end-of-turn token"


@pytest.mark.parametrize("pairing, conv_name, gen", CASES)
def test_golden(pairing, conv_name, gen, tokenizers, official):
    tok = tokenizers(pairing.tokenizer)
    official_jinja = official(pairing.official)
    messages = conversation(conv_name)
    kwargs = dict(pairing.shared_kwargs)
    ours = {**pairing.options, **kwargs}

    if messages[0]["role"] == "system" and not get_template(pairing.template).supports_system:
        with pytest.raises(Exception, match="System role not supported"):
            tok.apply_chat_template(messages, chat_template=official_jinja, tokenize=False,
                                    add_generation_prompt=gen, **kwargs)
        with pytest.raises(ChatFormatError):
            render(messages, pairing.template, gen, tokenizer=tok, **ours)
        with pytest.raises(ChatFormatError):
            encode(messages, tok, pairing.template, add_generation_prompt=gen, **ours)
        return

    want_text = tok.apply_chat_template(messages, chat_template=official_jinja, tokenize=False,
                                        add_generation_prompt=gen, **kwargs)
    want_ids = tok.apply_chat_template(messages, chat_template=official_jinja, tokenize=True,
                                       add_generation_prompt=gen, **kwargs)["input_ids"]
    assert render(messages, pairing.template, gen, tokenizer=tok, **ours) == want_text

    enc = encode(messages, tok, pairing.template, add_generation_prompt=gen, **ours)
    assert enc["input_ids"] == want_ids

    offsets = tok(want_text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert len(offsets) == len(want_ids)
    end_id = tok.convert_tokens_to_ids(END_OF_TURN[pairing.template] or tok.eos_token)
    assert_supervision(enc, want_text, offsets, expected_pieces(pairing.template, messages, tok.eos_token), end_id)

    last = encode(messages, tok, pairing.template, add_generation_prompt=gen, train_on="last", **ours)
    assert last["input_ids"] == want_ids
    assert_supervision(last, want_text, offsets, expected_pieces(pairing.template, messages, tok.eos_token)[-1:],
                       end_id)


def _special_text_conversation(special):
    return [u(f"What does {special} mean?  {special}"), a(f"It is {special} a marker.\n{special}"),
            u(f"{special}"), a(f"{special} ok")]


@pytest.mark.parametrize("template_name", list(TEMPLATES))
def test_special_text_error_by_default(template_name, template_tokenizer, primary):
    tok = template_tokenizer(template_name)
    special = END_OF_TURN[template_name] or tok.eos_token
    messages = _special_text_conversation(special)
    with pytest.raises(ChatFormatError, match="special_text='keep'"):
        encode(messages, tok, template_name, **primary[template_name][2])
    with pytest.raises(ChatFormatError):  # a user message alone is enough
        encode([u(f"end it here {special} please"), a("No.")], tok, template_name, **primary[template_name][2])


@pytest.mark.parametrize("template_name", list(TEMPLATES))
def test_special_text_keep_is_plain_text(template_name, template_tokenizer, official, primary):
    """special_text="keep": special-token text in content is tokenized as plain text, exactly as transformers'
    `apply_chat_template(..., sanitize_control_tokens=True)` does with the official template."""
    tok = template_tokenizer(template_name)
    _, official_file, options = primary[template_name]
    special = END_OF_TURN[template_name] or tok.eos_token
    special_id = tok.convert_tokens_to_ids(special)
    messages = _special_text_conversation(special)
    literal = sum(m["content"].count(special) for m in messages)

    enc = encode(messages, tok, template_name, special_text="keep", **options)
    want = tok.apply_chat_template(messages, chat_template=official(official_file),
                                   sanitize_control_tokens=True)["input_ids"]
    assert enc["input_ids"] == want
    text = render(messages, template_name, tokenizer=tok, **options)
    assert enc["input_ids"].count(special_id) == text.count(special) - literal  # only the template's own
    squeeze = "".join  # compare decoded text without whitespace: SentencePiece and rstrip tokens move it
    assert squeeze(tok.decode(enc["input_ids"]).split()) == squeeze(text.split())

    # the supervision is unchanged: a run per assistant message, covering its content and end-of-turn
    pieces = expected_pieces(template_name, messages, tok.eos_token)
    runs = supervised_runs(enc["labels"])
    assert len(runs) == len(pieces) == 2
    for (first, last), piece in zip(runs, pieces):
        assert enc["input_ids"][last] == special_id
        assert special_id not in enc["input_ids"][first:last]  # the literal ones are plain text
        assert squeeze(tok.decode(enc["input_ids"][first:last + 1]).split()) == squeeze(piece.split())
