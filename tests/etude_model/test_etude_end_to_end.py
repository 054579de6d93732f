"""Etude through every stage at toy size, with the commands of etude_model/README.md "End to end": pretrain
(etude_model.pretrain) -> SFT (main_train.py) -> DPO (main_train.py --stage dpo) -> chat (inference.py)."""
import re

import torch
from transformers import AutoModelForCausalLM

import inference
import main_train
from data.make_skill_pairs import make_pair_splits
from etude_model.pretrain import main as pretrain
from tests.conftest import REPO, write_jsonl

SKILLS = REPO / "data" / "skills"
TOY_SIZE = ["hidden_size=64", "num_hidden_layers=2", "num_attention_heads=4", "num_key_value_heads=2"]
TRAINER_FLAGS = ["--template_name", "etude", "--train_mode", "full", "--max_len", "64", "--report_to", "none",
                 "--disable_tqdm", "true", "--activation_checkpointing", "false", "--logging_steps", "2",
                 "--save_steps", "1000", "--warmup_steps", "0"]


def pretrain_toy(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(line + "\n" for line in (SKILLS / "train.jsonl").read_text().splitlines()[:200]))
    out = tmp_path / "pretrain"
    argv = ["--preset", "etude-tiny", "--tokenizer", str(SKILLS / "tokenizer"), "--data", str(corpus),
            "--text_split", "line", "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"),
            "--max_steps", "4", "--batch_size", "4", "--block_size", "32", "--lr", "3e-3", "--warmup_steps", "1",
            "--eval_every", "4", "--eval_iters", "1", "--no_progress"]
    pretrain(argv + [flag for item in TOY_SIZE for flag in ("--config_override", item)])
    return out


def test_pretrain_sft_dpo_chain_raises_preference_accuracy_and_chats(tmp_path, capsys):
    pretrained = pretrain_toy(tmp_path)
    sft, dpo = tmp_path / "sft", tmp_path / "dpo"
    main_train.main(["--model_name_or_path", str(pretrained), "--output_dir", str(sft), *TRAINER_FLAGS,
                     "--train_data_path", str(SKILLS / "train.jsonl"), "--eval_data_path", str(SKILLS / "eval.jsonl"),
                     "--score_samples", "0", "--max_steps", "20", "--per_device_train_batch_size", "16",
                     "--learning_rate", "3e-3", "--eval_steps", "20"])
    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_pair_splits(16, 0)[0])
    trainer = main_train.main(["--model_name_or_path", str(sft), "--output_dir", str(dpo), *TRAINER_FLAGS,
                               "--stage", "dpo", "--train_data_path", str(pairs), "--eval_data_path", str(pairs),
                               "--max_steps", "8", "--per_device_train_batch_size", "8", "--learning_rate", "3e-3",
                               "--beta", "0.1", "--eval_steps", "8"])
    log = capsys.readouterr().out
    before, after = map(float, re.search(r"preference accuracy: ([\d.]+)% before -> ([\d.]+)% after", log).groups())
    assert trainer.state.global_step == 8 and after > before, log[-3000:]

    models = {stage: AutoModelForCausalLM.from_pretrained(folder) for stage, folder in
              (("pretrain", pretrained), ("sft", sft), ("dpo", dpo))}
    assert models["pretrain"].config.model_type == "etude" and models["dpo"].config.training_stage == "sft"
    sft_weight, dpo_weight = (models[s].model.layers[0].mlp.up_proj.weight for s in ("sft", "dpo"))
    assert not torch.equal(sft_weight, dpo_weight)  # DPO trained the SFT model, and saved what it trained
    chat = ["--model_name_or_path", str(dpo), "--prompt", "first: apple river", "--max_new_tokens", "6",
            "--temperature", "0"]
    inference.main(chat)  # answers one prompt and exits
    _, tokenizer, stops = inference.load(inference.parse_args(chat))
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in stops  # the DPO folder keeps the etude template's stop
