"""Preference training through main_train.py (stage dpo, kto, rm) on tiny random models with real tokenizers.

The method runs use Phi-3's tokenizer: its 32k vocabulary keeps the log-prob heads cheap on CPU (each pair is four
forwards through the head: policy and reference, chosen and rejected); the real pairs run on Qwen's 152k."""
from __future__ import annotations

import functools
import json
import math
import re

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

import main_train
from tests.conftest import shared_path, train_argv, write_jsonl
from tests.test_main_train import METHODS, eval_mode, reload

# Each answer is chosen after one prompt and rejected after another, so a model that ignores the prompt ranks half
# of the pairs right: to rank them all it must learn the preference itself.
PAIRS = [
    {"prompt": "Sky colour?", "chosen": "Blue.", "rejected": "Green."},
    {"prompt": "Grass colour?", "chosen": "Green.", "rejected": "Blue."},
    {"prompt": "Two plus two?", "chosen": "Four.", "rejected": "Five."},
    {"prompt": "Fingers on a hand?", "chosen": "Five.", "rejected": "Four."},
]
KTO_RECORDS = [{"prompt": p["prompt"], "completion": p[side], "label": side == "chosen"}
               for p in PAIRS for side in ("chosen", "rejected")]
STAGES = {"dpo": ["--stage", "dpo"], "orpo": ["--rlhf_type", "ORPO", "--beta", "2"],
          "simpo": ["--stage", "dpo", "--pref_loss", "simpo", "--beta", "2"],
          "kto": ["--stage", "kto"], "rm": ["--stage", "rm", "--max_steps", "16", "--learning_rate", "0.01"]}


def pref_argv(model_dir, data, out, *extra, template="phi3"):
    return train_argv(model_dir, data, out, "--template_name", template, "--max_steps", "6",
                      "--per_device_train_batch_size", "4", "--learning_rate", "0.05", "--lora_rank", "8",
                      "--lora_alpha", "16", "--beta", "0.5", *extra)


def all_parameters(trainer) -> int:
    """Elements of every distinct parameter tensor held by any module the trainer references."""
    modules = [v for v in vars(trainer).values() if isinstance(v, torch.nn.Module)]
    tensors = {p.data_ptr(): p.numel() for m in modules for p in m.parameters()}
    return sum(tensors.values())


# DPO in every mode; each other method in one mode, the modes spread over them (the CPU time budget)
RUNS = [("dpo", "lora"), ("dpo", "qlora"), ("dpo", "dora"), ("dpo", "full"), ("orpo", "lora"), ("simpo", "qlora"),
        ("kto", "lora"), ("kto", "full"), ("rm", "lora"), ("rm", "full")]


@pytest.mark.parametrize("stage,method", RUNS)
def test_preference_method_trains_ranks_pairs_and_reloads(stage, method, tiny_model, tmp_path, capsys):
    model_dir, out = tiny_model("phi3"), tmp_path / "out"
    data = write_jsonl(tmp_path / "d.jsonl", KTO_RECORDS if stage == "kto" else PAIRS)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    trainer = main_train.main(pref_argv(model_dir, data, out, *STAGES[stage], *METHODS[method],
                                        "--eval_data_path", str(pairs) if stage != "kto" else str(data)))
    log = capsys.readouterr().out
    assert "[dojo] verified" in log
    history = trainer.state.log_history
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history if "loss" in h)
    if stage != "kto":  # held-out (here: the training pairs) preference accuracy rises
        before, after = map(float, re.search(r"accuracy: ([\d.]+)% before -> ([\d.]+)%", log).groups())
        assert after > before
    if stage not in ("rm",):
        assert (out / "preference_metrics.png").is_file()
        final = [h for h in history if "eval_rewards/margins" in h][-1]
        assert final["eval_rewards/margins"] > 0  # the policy moved towards chosen, away from rejected
    record = json.loads((out / "dojo_run.json").read_text())
    assert record["stage"] == {"orpo": "dpo", "simpo": "dpo"}.get(stage, stage)

    # the output reloads in plain transformers/peft and computes what the trained model computes
    if stage == "rm":
        if method == "full":
            reloaded = AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32)
        else:
            base = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32, num_labels=1)
            reloaded = PeftModel.from_pretrained(base, out)
    else:
        reloaded = reload(out, model_dir, method)
    ids = torch.tensor([trainer.processing_class("Sky colour? Blue.")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(eval_mode(reloaded)(input_ids=ids).logits,
                                   eval_mode(trainer.model)(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("loss,first_loss", [("ipo", 1 / (4 * 0.5 ** 2)), ("hinge", 1.0)])
def test_pref_loss_picks_trl_dpo_loss(loss, first_loss, tiny_model, tmp_path):
    """At the first step the policy is the reference (log-ratios 0): each loss has its own known value there."""
    trainer = main_train.main(pref_argv(tiny_model("phi3"), write_jsonl(tmp_path / "d.jsonl", PAIRS), tmp_path / "o",
                                        "--stage", "dpo", "--pref_loss", loss, "--max_steps", "1"))
    assert trainer.loss_types == [loss]
    assert trainer.state.log_history[0]["loss"] == pytest.approx(first_loss, abs=1e-4)


def test_pref_ftx_adds_the_chosen_answers_nll_to_the_dpo_loss(tiny_model, tmp_path):
    """At the first step DPO's sigmoid loss is ln 2 (policy = reference); the rest is pref_ftx x the chosen answers'
    NLL, so doubling pref_ftx doubles it."""
    data, first = write_jsonl(tmp_path / "d.jsonl", PAIRS), {}
    for ftx in ("1", "2"):
        trainer = main_train.main(pref_argv(tiny_model("phi3"), data, tmp_path / ftx, "--stage", "dpo",
                                            "--pref_ftx", ftx, "--max_steps", "1"))
        assert trainer.loss_types == ["sigmoid", "sft"] and trainer.loss_weights == [1.0, float(ftx)]
        first[ftx] = trainer.state.log_history[0]["loss"] - math.log(2)
    assert first["1"] > 1.0  # a random model's NLL: several nats per token
    assert first["2"] == pytest.approx(2 * first["1"], rel=1e-4)


def test_a_preference_run_scores_the_chosen_answers_and_the_sft_skills_it_keeps(tiny_model, tmp_path, capsys):
    """score_data_path in a preference run: a file of pairs is scored against each chosen answer, a file of SFT
    records against its last assistant turn; before and after training, into score.json as for SFT."""
    pairs = write_jsonl(tmp_path / "d.jsonl", PAIRS)
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"instruction": "Say hi.", "output": "Hi."}])
    out = tmp_path / "out"
    main_train.main(pref_argv(tiny_model("phi3"), pairs, out, "--stage", "dpo", "--max_steps", "2",
                              "--score_data_path", str(pairs), str(sft), "--score_samples", "5"))
    score = json.loads((out / "score.json").read_text())
    assert [a["reference"] for a in score["answers"]] == [p["chosen"] for p in PAIRS] + ["Hi."]
    assert [a["prompt"] for a in score["answers"]] == [p["prompt"] for p in PAIRS] + ["Say hi."]
    assert score["before"] is not None and score["after"] is not None
    assert "held-out exact match:" in capsys.readouterr().out


@pytest.mark.parametrize("fast", [[], ["--padding_free", "true"]], ids=["padded", "packed"])
def test_dpo_with_compiled_layers_trains_like_eager(fast, tiny_model, tmp_path):
    """compile_layers serves preference runs too (it was silently ignored there): the policy and the reference (the
    adapter off) through the compiled layers give the eager run's losses."""
    data, losses = write_jsonl(tmp_path / "d.jsonl", PAIRS), {}
    for compiled in ("false", "true"):
        trainer = main_train.main(pref_argv(tiny_model("phi3"), data, tmp_path / compiled, "--stage", "dpo",
                                            "--max_steps", "3", "--compile_layers", compiled, *fast))
        losses[compiled] = [h["loss"] for h in trainer.state.log_history if "loss" in h and "train_loss" not in h]
        layer = trainer.model.base_model.model.model.layers[0]
        assert isinstance(layer.forward, functools.partial) == (compiled == "true")
    assert losses["true"] == pytest.approx(losses["false"], abs=1e-5)
    assert len(set(losses["false"])) > 1  # it trained


def test_dpo_offloads_checkpoint_inputs_and_trains_like_plain_checkpointing(tiny_model, tmp_path, capsys):
    """offload_checkpoints serves preference runs too: the checkpointing layers offload their inputs (on a CPU the
    hooks leave them in place) and the losses are the plain checkpointing's."""
    from transformers.modeling_layers import GradientCheckpointingLayer
    data, losses = write_jsonl(tmp_path / "d.jsonl", PAIRS), {}
    for offload in ("false", "true"):
        trainer = main_train.main(pref_argv(tiny_model("phi3"), data, tmp_path / offload, "--stage", "dpo",
                                            "--max_steps", "3", "--offload_checkpoints", offload))
        losses[offload] = [h["loss"] for h in trainer.state.log_history if "loss" in h and "train_loss" not in h]
        layers = [m for m in trainer.model.modules() if isinstance(m, GradientCheckpointingLayer)]
        assert layers and all(getattr(m._gradient_checkpointing_func, "offloads_inputs", False) == (offload == "true")
                              for m in layers)
        logged = "checkpointed layers' inputs in host memory" in capsys.readouterr().out
        assert logged == (offload == "true")
    assert losses["true"] == pytest.approx(losses["false"], abs=1e-6)


def test_dpo_on_lora_holds_no_second_model_copy(tiny_model, tmp_path):
    """The reference is the adapter switched off: every parameter the trainer can reach is the policy's own."""
    out = tmp_path / "out"
    trainer = main_train.main(pref_argv(tiny_model("phi3"), write_jsonl(tmp_path / "d.jsonl", PAIRS), out,
                                        "--stage", "dpo", "--max_steps", "1"))
    assert trainer.ref_model is None and "ref" not in trainer.model.peft_config
    assert all_parameters(trainer) == sum(p.numel() for p in trainer.model.parameters())


def test_dpo_full_keeps_a_frozen_reference_unless_precomputed(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", PAIRS)
    trainer = main_train.main(pref_argv(tiny_model("phi3"), data, tmp_path / "a", "--stage", "dpo",
                                        "--train_mode", "full", "--max_steps", "1"))
    policy = sum(p.numel() for p in trainer.model.parameters())
    assert all_parameters(trainer) == 2 * policy and not any(p.requires_grad for p in trainer.ref_model.parameters())
    trainer = main_train.main(pref_argv(tiny_model("phi3"), data, tmp_path / "b", "--stage", "dpo",
                                        "--train_mode", "full", "--max_steps", "1",
                                        "--precompute_ref_log_probs", "true"))
    assert all_parameters(trainer) == policy and "ref_chosen_logps" in trainer.train_dataset.column_names


@pytest.mark.parametrize("name,family", [("dpo_en_demo.jsonl", "phi3"), ("dpo_zh_demo.jsonl", "phi3")])
def test_dpo_lora_on_real_pairs(name, family, tiny_model, tmp_path, capsys):
    lines = shared_path("data", "dpo", name).read_text(encoding="utf-8").splitlines()[:16]
    data = write_jsonl(tmp_path / name, [json.loads(line) for line in lines])
    trainer = main_train.main(pref_argv(tiny_model(family), data, tmp_path / "o", "--stage", "dpo", "--max_len", "256",
                                        "--max_steps", "2", "--per_device_train_batch_size", "2", template=family))
    log = capsys.readouterr().out
    assert trainer.state.global_step == 2 and "[dojo] verified" in log
    # every record is read; the ones whose prompt fills the 256 tokens are dropped and counted
    kept = int(re.search(r"train data: (\d+) of 16 samples", log).group(1))
    assert 0 < kept <= 16 and (kept == 16 or "no answer token left after truncation to 256" in log)


def test_ready_dpo_config_dry_runs_on_real_pairs(tiny_model, tmp_path, capsys):
    data = shared_path("data", "dpo", "dpo_en_demo.jsonl")
    assert main_train.main(["qwen_dpo", "--model_name_or_path", str(tiny_model("qwen")), "--train_data_path", str(data),
                            "--output_dir", str(tmp_path / "o"), "--dry_run", "true", "--max_len", "256"]) is None
    log = capsys.readouterr().out
    assert "train data: " in log and "of 300 samples" in log and not (tmp_path / "o").exists()


def test_dpo_on_a_fresh_etude_preset_with_the_skills_tokenizer(tmp_path, capsys):
    """Etude (our own architecture) goes through trl's log-prob head too: the pretrain -> SFT -> DPO path."""
    data = write_jsonl(tmp_path / "d.jsonl", PAIRS)
    trainer = main_train.main(["--model_name_or_path", "etude-tiny",
                               "--tokenizer_name_or_path", "data/skills/tokenizer",
                               "--template_name", "etude", "--train_mode", "full", "--stage", "dpo",
                               "--train_data_path", str(data), "--eval_data_path", str(data), "--output_dir",
                               str(tmp_path / "o"), "--max_steps", "4", "--per_device_train_batch_size", "4",
                               "--learning_rate", "2e-4", "--max_len", "64", "--report_to", "none",
                               "--activation_checkpointing", "false", "--disable_tqdm", "true"])
    log = capsys.readouterr().out
    before, after = map(float, re.search(r"accuracy: ([\d.]+)% before -> ([\d.]+)%", log).groups())
    assert trainer.state.global_step == 4 and after > before and "[dojo] verified" in log
