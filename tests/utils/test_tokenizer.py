"""build_tokenizer: which template a run trains with, why, with which render options, and what it refuses.

Train/serve parity: the template a run trains with must render what the model folder's own chat_template renders
(that is what vLLM, transformers and llama.cpp serve it with), or the run stops before anything is written.
"""
from __future__ import annotations

import pytest

import chat_template
import main_train
from tests.conftest import train_argv
from utils.config import parse_args
from utils.tokenizer import build_tokenizer

QWEN25_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
HI = [{"role": "user", "content": "Hi!"}]


def args_for(model_dir, tmp_path, *extra):
    return parse_args(train_argv(model_dir, tmp_path / "data.jsonl", tmp_path / "out", *extra))


def test_qwen25_default_system_comes_from_the_models_own_template(tiny_model, tmp_path):
    """The qwen template once injected Qwen1.5's "You are a helpful assistant." into Qwen2.5 runs."""
    tok, name, reason = build_tokenizer(args_for(tiny_model("qwen"), tmp_path, "--template_name", "qwen"))
    assert name == "qwen" and QWEN25_SYSTEM in reason and "renders the probe conversations exactly" in reason
    assert f"<|im_start|>system\n{QWEN25_SYSTEM}<|im_end|>" in chat_template.render(HI, name, tokenizer=tok)
    # the saved tokenizer renders it too
    assert tok.apply_chat_template(HI, tokenize=False) == chat_template.render(HI, name, tokenizer=tok)


def test_default_system_field_sets_the_injected_system_prompt(tiny_model, tmp_path):
    tok, name, reason = build_tokenizer(args_for(tiny_model("qwen"), tmp_path, "--template_name", "qwen",
                                                 "--default_system", "Be terse."))
    assert "<|im_start|>system\nBe terse.<|im_end|>" in chat_template.render(HI, name, tokenizer=tok)
    assert tok.apply_chat_template(HI, tokenize=False).startswith("<|im_start|>system\nBe terse.<|im_end|>")
    with pytest.raises(ValueError, match="has no default system prompt"):
        build_tokenizer(args_for(tiny_model("qwen"), tmp_path, "--template_name", "yi", "--template_mismatch", "ok",
                                 "--default_system", "Be terse."))


def test_template_mismatch_stops_before_anything_is_written(tiny_model, toy_data, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="renders differently from the model folder's own chat_template") as err:
        main_train.main(train_argv(tiny_model("qwen"), toy_data, out, "--template_name", "yi"))
    assert "differs at character" in str(err.value) and "You are Qwen" in str(err.value)
    assert "--template_mismatch ok" in str(err.value)
    assert not out.exists()


def test_template_mismatch_ok_accepts_the_difference_and_says_so(tiny_model, tmp_path):
    _, name, reason = build_tokenizer(args_for(tiny_model("qwen"), tmp_path, "--template_name", "yi",
                                               "--template_mismatch", "ok"))
    assert name == "yi" and "accepted by template_mismatch ok" in reason


def test_base_model_without_template_says_so_and_continues(tiny_model, tmp_path):
    _, name, reason = build_tokenizer(args_for(tiny_model("gemma"), tmp_path))  # Gemma 2's tokenizer, no template
    assert name == "gemma" and "no chat_template" in reason


def test_template_with_control_tokens_missing_from_the_vocabulary_is_refused(tiny_model, tmp_path):
    """Gemma's <start_of_turn> is not in Qwen's vocabulary: it would be added with a random embedding."""
    with pytest.raises(ValueError, match="<start_of_turn>, <end_of_turn>.*--train_new_tokens true"):
        build_tokenizer(args_for(tiny_model("qwen"), tmp_path, "--template_name", "gemma",
                                 "--template_mismatch", "ok"))


def test_train_new_tokens_adds_them_and_lora_trains_the_embeddings(tiny_model, tmp_path):
    from utils.model import apply_peft, build_model
    args = args_for(tiny_model("qwen"), tmp_path, "--template_name", "gemma", "--template_mismatch", "ok",
                    "--train_new_tokens", "true")
    tok, _, reason = build_tokenizer(args)
    assert "added 2 new control tokens" in reason and "modules_to_save" in reason
    model = apply_peft(build_model(args, vocab_size=len(tok)), args)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("embed_tokens" in n and "modules_to_save" in n for n in trainable)


def test_train_new_tokens_trains_no_embeddings_when_none_were_added(tiny_model, tmp_path):
    args = args_for(tiny_model("qwen"), tmp_path, "--template_name", "qwen", "--train_new_tokens", "true")
    build_tokenizer(args)
    assert args.train_new_tokens is False


# --- a real model outside our families: SmolLM2-135M-Instruct (tests/real_models.py) ---------------------------

SMOLLM2_CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"},
     {"role": "assistant", "content": "Bonjour"}, {"role": "user", "content": "Thanks"},
     {"role": "assistant", "content": "De rien !"}],
]


def test_smollm2_keeps_its_own_template_not_yi(smollm2, tmp_path):
    tok, name, reason = build_tokenizer(args_for(smollm2, tmp_path))
    assert name == "own", reason
    assert "closest family 'yi' differs" in reason and "SmolLM" in reason
    assert tok.apply_chat_template(HI, tokenize=False).startswith(f"<|im_start|>system\n{SMOLLM2_SYSTEM}<|im_end|>")
    assert chat_template.stop_token_ids(tok, name) == [tok.convert_tokens_to_ids("<|im_end|>")]
    assert chat_template.describe(tok, name) == {"template": "own", "mask": "prefix renders",
                                                 "end_of_turn": "<|im_end|>"}


def test_smollm2_own_template_encodes_token_exact_with_loss_on_assistant_turns_only(smollm2, tmp_path):
    from utils.tokenizer import load_tokenizer
    served = load_tokenizer(str(smollm2))  # as transformers/vLLM load the folder: the model's own template
    tok, name, _ = build_tokenizer(args_for(smollm2, tmp_path))
    for messages in SMOLLM2_CONVERSATIONS:
        enc = chat_template.encode(messages, tok, name)
        assert enc["input_ids"] == served.apply_chat_template(messages, tokenize=True)["input_ids"]
        supervised = [t for t, label in zip(enc["input_ids"], enc["labels"]) if label != chat_template.IGNORE_INDEX]
        want = "".join(m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant")
        assert tok.decode(supervised) == want
    prompt = chat_template.encode(HI, tok, name, add_generation_prompt=True)["input_ids"]
    assert prompt == served.apply_chat_template(HI, tokenize=True, add_generation_prompt=True)["input_ids"]


def test_smollm2_dry_run_prints_why_it_keeps_its_own_template(smollm2, toy_data, tmp_path, capsys):
    main_train.main(train_argv(smollm2, toy_data, tmp_path / "out", "--dry_run", "true"))
    printed = capsys.readouterr().out
    assert "[dojo] template: own (the model's own chat_template" in printed and "closest family 'yi'" in printed
    assert f"{SMOLLM2_SYSTEM}<|im_end|>" in printed  # the marked sample shows the model's own default system


def test_smollm2_with_another_familys_template_is_refused_unless_accepted(smollm2, tmp_path):
    with pytest.raises(ValueError, match="renders differently.*SmolLM"):
        build_tokenizer(args_for(smollm2, tmp_path, "--template_name", "yi"))
