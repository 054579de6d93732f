"""The Etude tokenizers: GPT-2 BPE with chat tokens (ids == tiktoken's), and train_tokenizer."""

import pytest

from etude_model import CHAT_TEMPLATE, check_vocab, load_etude_tokenizer, make_config, padded_vocab_size

TEXTS = [
    "Hello world! 你好，世界。",
    "红楼梦 第一回 甄士隐梦幻识通灵 贾雨村风尘怀闺秀",
    "emoji 😀👍🏽 and a family 👨‍👩‍👧 ✨",
    "  leading, trailing and   inner   spaces   ",
    "tabs\t\tand\nnew\n\n\nlines \n ",
    "I'm sure they'll say it's 1234567 or 3.14159; don't.",
    "mixed 中文English混排 with numbers 2024年12月",
]


def test_ids_equal_tiktoken(gpt2_tokenizer, gpt2_tiktoken_path):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    from tiktoken_ext.openai_public import r50k_pat_str

    enc = tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str,
                            mergeable_ranks=load_tiktoken_bpe(str(gpt2_tiktoken_path)),
                            special_tokens={"<|endoftext|>": 50256})
    assert enc.encode("hello world") == [31373, 995]
    for text in TEXTS + ["\n\n".join(TEXTS)]:
        ids = gpt2_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == enc.encode_ordinary(text), text
        assert gpt2_tokenizer.decode(ids) == text  # byte-level BPE round-trips exactly


def test_special_tokens_and_sizes(gpt2_tokenizer):
    tok = gpt2_tokenizer
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]) == [
        50256, 50257, 50258, 50259]
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id) == ("<|endoftext|>", 50256, 50259)
    assert len(tok) == 50260 and padded_vocab_size(len(tok)) == 50304 == make_config("etude-tiny").vocab_size
    ids = tok("<|im_start|>user\n你好<|im_end|>")["input_ids"]
    assert ids[0] == 50257 and ids[-1] == 50258
    assert tok.decode(ids) == "<|im_start|>user\n你好<|im_end|>"
    assert tok.decode(ids, skip_special_tokens=True) == "user\n你好"
    enc = tok("Hello world", return_offsets_mapping=True)
    assert enc["offset_mapping"] == [(0, 5), (5, 11)]


def test_chat_template(gpt2_tokenizer):
    messages = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "Hi!"}]
    text = gpt2_tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\nHi!<|im_end|>\n"
    prompt = gpt2_tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
    out = gpt2_tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    trained = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert gpt2_tokenizer.decode(trained) == "Hi!<|im_end|>"


def test_save_and_reload(gpt2_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    gpt2_tokenizer.save_pretrained(tmp_path)
    for loaded in (load_etude_tokenizer(tmp_path), AutoTokenizer.from_pretrained(tmp_path)):
        for text in TEXTS:
            assert loaded(text)["input_ids"] == gpt2_tokenizer(text)["input_ids"]
        assert loaded.chat_template == CHAT_TEMPLATE and loaded.pad_token_id == 50259 and len(loaded) == 50260


def test_vocab_mismatch_is_a_clear_error(gpt2_tokenizer):
    check_vocab(make_config("etude-tiny"), gpt2_tokenizer)  # 50260 tokens fit in 50304 rows
    with pytest.raises(ValueError, match=r"50260 tokens.*vocab_size is 50257"):
        check_vocab(make_config("etude-v0.1"), gpt2_tokenizer)  # the seed had no room for chat tokens


def test_train_tokenizer(small_tokenizer_dir, corpus_file):
    tok = load_etude_tokenizer(small_tokenizer_dir)
    assert len(tok) == 400
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]) == [0, 1, 2, 3]
    assert (tok.eos_token_id, tok.pad_token_id) == (0, 3)
    for text in TEXTS + [corpus_file.read_text(encoding="utf-8")[:2000]]:
        assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: even unseen characters round-trip
    seen = "The cat sat on the mat. 春眠不觉晓"
    assert len(tok(seen)["input_ids"]) < len(seen.encode("utf-8")) / 2  # merges learned from the corpus
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    config = make_config("etude-tiny", vocab_size=padded_vocab_size(len(tok)))
    assert config.vocab_size == 448  # 400 rounded up to a multiple of 64
    check_vocab(config, tok)
    with pytest.raises(ValueError, match="400 tokens.*vocab_size is 256"):
        check_vocab(make_config("etude-tiny", vocab_size=256), tok)


def test_tokenizer_carries_the_chat_template_package_definition(small_tokenizer_dir):
    """One definition of the Etude chat format: the tokenizer (also after save/load) carries etude.jinja."""
    from chat_template import get_template, render

    tok = load_etude_tokenizer(small_tokenizer_dir)
    assert tok.chat_template == get_template("etude").jinja
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}]
    for prompt in (False, True):
        assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt) == render(
            messages, "etude", add_generation_prompt=prompt)
