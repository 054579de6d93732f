"""DPO's fast path (utils/preference_fast.py): packed rows give trl's DPOTrainer the same log-probs, losses, metrics
and gradients as its own padded batches, on a tiny random Qwen2 in fp32 with the real Qwen tokenizer."""
from __future__ import annotations

import dataclasses
import random
import re

import datasets
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig

import main_train
from tests.conftest import write_jsonl
from tests.test_preference import PAIRS, all_parameters, pref_argv
from utils.config import parse_args
from utils.preference import DojoDPOTrainer, dpo_loss_fields
from utils.preference_fast import FastDPOTrainer, PackedPreferenceCollator

NON_MODEL_KEYS = ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")


def random_pairs(n: int, seed: int = 0) -> list[dict]:
    """Token-id pairs of uneven lengths (so that the padded batch pads and the packed row does not)."""
    rng = random.Random(seed)
    ids = lambda k: [rng.randrange(10, 5000) for _ in range(k)]  # noqa: E731
    return [{"prompt_ids": ids(rng.randint(2, 9)), "chosen_ids": ids(rng.randint(1, 12)),
             "rejected_ids": ids(rng.randint(1, 12))} for _ in range(n)]


def lora_policy(model_dir, seed: int = 0):
    """A LoRA policy whose adapter is random (B != 0), so that it differs from its reference, the adapter off."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(model, config)


def trainer_pair(model_dir, tmp_path, loss: str, pairs: list[dict], pref_ftx: float = 0.0):
    """trl's DPOTrainer (padded batches) and ours (packed rows), each on its own copy of the same LoRA policy.
    loss: a trl loss_type; pref_ftx: the weight of trl's SFT term added to it (0: none), as a run sets them."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = datasets.Dataset.from_list(pairs)
    config = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=len(pairs), report_to="none",
                       beta=0.5, max_length=None, gradient_checkpointing=False, use_cpu=True,
                       **dpo_loss_fields(loss, pref_ftx))
    trl = DojoDPOTrainer(model=lora_policy(model_dir), args=config, train_dataset=dataset, processing_class=tokenizer)
    ours = FastDPOTrainer(model=lora_policy(model_dir), args=config, train_dataset=dataset, processing_class=tokenizer,
                          data_collator=PackedPreferenceCollator(tokenizer.pad_token_id))
    for trainer in (trl, ours):  # trl copies a given adapter as the reference ("ref"); ours is the adapter off
        trainer.model.delete_adapter("ref")
        trainer.model.set_adapter("default")
    return trl, ours


def head_outputs(model, batch, reference: bool = False):
    """What trl's _compute_loss reads from the model for a batch: the fused head's per-token fields."""
    kwargs = {k: v for k, v in batch.items() if k not in NON_MODEL_KEYS}
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        if reference:
            with model.disable_adapter():
                return model(**kwargs, labels=labels, fused_lm_head=True, use_cache=False)
        return model(**kwargs, labels=labels, fused_lm_head=True, use_cache=False)


def test_packed_row_gives_trl_the_per_token_log_probs_of_its_padded_batch(tiny_model, tmp_path):
    pairs = random_pairs(4)
    trl, ours = trainer_pair(tiny_model("qwen"), tmp_path, "sigmoid", pairs)
    padded, packed = trl.data_collator(pairs), ours.data_collator(pairs)
    assert packed["packed_input_ids"].shape[1] == int(padded["attention_mask"].sum()) < padded["input_ids"].numel()
    for reference in (False, True):  # the policy, and the reference (the same weights, adapter off)
        want, got = head_outputs(trl.model, padded, reference), head_outputs(ours.model, packed, reference)
        for field in ("log_probs", "entropy", "mean_logits"):
            torch.testing.assert_close(getattr(got, field), getattr(want, field), atol=1e-6, rtol=1e-6)
        assert torch.equal(got.is_top1, want.is_top1) and torch.equal(got.label_mask, want.label_mask)
    policy, reference = head_outputs(ours.model, packed), head_outputs(ours.model, packed, reference=True)
    assert (policy.log_probs - reference.log_probs).abs().max() > 1e-3  # the adapter matters: a real test of both


@pytest.mark.parametrize("loss, pref_ftx", [("sigmoid", 0.0), ("ipo", 0.0), ("bco_pair", 0.0), ("sigmoid", 0.5)])
def test_fast_dpo_loss_metrics_and_gradients_equal_trl(loss, pref_ftx, tiny_model, tmp_path):
    pairs = random_pairs(4, seed=1)
    trl, ours = trainer_pair(tiny_model("qwen"), tmp_path, loss, pairs, pref_ftx)
    results = []
    for trainer in (trl, ours):
        trainer.model.train()
        batch = trainer.data_collator(pairs)
        value = trainer.compute_loss(trainer.model, batch)
        value.backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
        results.append((value.detach(), grads, metrics))
    (want, want_grads, want_metrics), (got, got_grads, got_metrics) = results
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert want_grads.keys() == got_grads.keys() and any(g.abs().max() > 0 for g in want_grads.values())
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    assert want_metrics.keys() == got_metrics.keys() and abs(want_metrics["rewards/margins"]) > 1e-3
    for key, value in want_metrics.items():  # log-probs, rewards, margins, accuracy, entropy, token counts
        assert got_metrics[key] == pytest.approx(value, abs=1e-5), key


def test_fast_dpo_trains_via_main_train_with_the_adapter_off_as_reference(tiny_model, tmp_path, capsys):
    """`--padding_free true --attn_implementation varlen` on stage dpo: our trainer, no second model copy, the policy
    learns the pairs, and the held-out accuracy (padded batches, no packed boundaries) is measured through sdpa."""
    data = write_jsonl(tmp_path / "d.jsonl", PAIRS)
    trainer = main_train.main(pref_argv(tiny_model("phi3"), data, tmp_path / "o", "--stage", "dpo",
                                        "--padding_free", "true", "--attn_implementation", "varlen",
                                        "--max_steps", "8", "--eval_data_path", str(data)))
    log = capsys.readouterr().out
    assert isinstance(trainer, FastDPOTrainer) and "[dojo] verified" in log
    assert "[dojo] plan: packed rows" in log and "attention varlen" in log  # the run says which step it runs
    assert trainer.ref_model is None and all_parameters(trainer) == sum(p.numel() for p in trainer.model.parameters())
    accuracies = [h["rewards/accuracies"] for h in trainer.state.log_history if "rewards/accuracies" in h]
    assert accuracies[0] == 0.0 and accuracies[-1] == 1.0  # step 1: policy = reference, no pair ranked yet
    before, after = map(float, re.search(r"accuracy: ([\d.]+)% before -> ([\d.]+)%", log).groups())
    assert after > before


@pytest.mark.parametrize("reference", [["--train_mode", "full"], ["--train_mode", "full", "--precompute_ref_log_probs",
                                                                   "true"]])
def test_fast_dpo_full_training_packs_the_frozen_or_precomputed_reference(reference, tiny_model, tmp_path):
    """Full training: the reference is a frozen copy, or its log-probs are computed once before training (inside
    trl's __init__, through the packed forward too); both give the packed log-probs of trl's padded batches."""
    data = write_jsonl(tmp_path / "d.jsonl", PAIRS)
    runs, rows = {}, {}
    for fast in ("false", "true"):
        rows[fast] = []  # the batch size of every embedding lookup: 1 for a packed row
        hook = torch.nn.modules.module.register_module_forward_hook(
            lambda module, inputs, output: rows[fast].append(inputs[0].shape[0])
            if isinstance(module, torch.nn.Embedding) else None)
        try:
            runs[fast] = main_train.main(pref_argv(tiny_model("phi3"), data, tmp_path / fast, "--stage", "dpo",
                                                   "--padding_free", fast, "--max_steps", "2", *reference))
        finally:
            hook.remove()
    assert isinstance(runs["true"], FastDPOTrainer) and not isinstance(runs["false"], FastDPOTrainer)
    assert set(rows["true"]) == {1} and set(rows["false"]) == {8}  # policy and reference: packed, or 2 x 4 padded
    for key in ("loss", "rewards/margins", "logps/chosen"):
        want = [h[key] for h in runs["false"].state.log_history if key in h]
        assert [h[key] for h in runs["true"].state.log_history if key in h] == pytest.approx(want, abs=1e-5), key


def test_ready_fast_dpo_config_is_qwen_dpo_on_packed_rows(tmp_path):
    """qwen_dpo_fast differs from qwen_dpo in the fast path's two switches only (and its output folder): the runs
    above prove the switches change no loss."""
    plain, fast = (parse_args([name, "--model_name_or_path", "m"]) for name in ("qwen_dpo", "qwen_dpo_fast"))
    changed = {f.name: getattr(fast, f.name) for f in dataclasses.fields(plain)
               if f.init and getattr(plain, f.name) != getattr(fast, f.name)}
    assert changed == {"padding_free": True, "attn_implementation": "varlen", "output_dir": "output/qwen_dpo_fast"}
