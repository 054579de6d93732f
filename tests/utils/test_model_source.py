"""utils/model_source.py: a model_name_or_path is a preset of a registered family or a folder; a new from-scratch
family is one registration, and the whole run (checks, tokenizer, template, model, save) takes it as it takes Etude."""
from __future__ import annotations

import transformers

import main_train
from utils import model_source
from utils.model_source import PresetFamily, register, resolve_model_source


def test_presets_resolve_to_their_family_and_anything_else_to_a_folder(tmp_path):
    etude = resolve_model_source("etude-tiny")
    assert (etude.kind, etude.template, etude.from_scratch) == ("preset", "etude", True)
    assert etude.config(vocab_size=466).vocab_size == 512  # sized to the tokenizer, padded to 64
    folder = resolve_model_source(str(tmp_path), trust_remote_code=True)
    assert (folder.kind, folder.template, folder.from_scratch, folder.trust_remote_code) == (
        "folder", None, False, True)


def test_a_new_preset_family_is_one_registration(tmp_path, toy_data, monkeypatch):
    monkeypatch.setattr(model_source, "FAMILIES", list(model_source.FAMILIES))  # the registration ends with the test

    def make_config(preset, vocab_size):
        return transformers.LlamaConfig(vocab_size=vocab_size or 512, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
    register(PresetFamily("Toy", {"toy-llama"}, make_config, transformers.LlamaForCausalLM,
                          lambda: transformers.AutoTokenizer.from_pretrained("data/skills/tokenizer"), "etude"))
    out = tmp_path / "out"
    trainer = main_train.main(["--model_name_or_path", "toy-llama", "--train_data_path", str(toy_data),
                               "--output_dir", str(out), "--train_mode", "full", "--max_steps", "2",
                               "--per_device_train_batch_size", "2", "--max_len", "64", "--report_to", "none",
                               "--disable_tqdm", "true", "--save_steps", "1000", "--score_before", "false"])
    assert isinstance(trainer.model, transformers.LlamaForCausalLM) and trainer.model.config.hidden_size == 32
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.vocab_size == trainer.model.config.vocab_size
    assert transformers.AutoTokenizer.from_pretrained(out).chat_template == trainer.processing_class.chat_template
