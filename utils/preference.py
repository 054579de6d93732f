"""Preference training (stage dpo, kto, rm) through trl's trainers, on data that chat_template/ tokenized.

`run` reads top to bottom like main_train.py's SFT run: data -> model -> reference -> trainer -> held-out preference
accuracy before -> train -> after -> save. trl 1.16 is the implementation of every loss:
  dpo + sigmoid, ipo, hinge, ... (DPO)  trl.DPOTrainer (log-probs through its chunked LM head: no full logits;
                                        padding_free: on packed rows, utils/preference_fast.py)
  dpo + orpo                            trl.experimental.orpo.ORPOTrainer
  dpo + simpo, cpo                      trl.experimental.cpo.CPOTrainer (loss_type simpo / sigmoid)
  kto                                   trl.KTOTrainer
  rm                                    trl.RewardTrainer on AutoModelForSequenceClassification (one output)
Each trainer is subclassed only to take our tokenized rows as they are: trl's own tokenization would render with the
tokenizer's chat template, and ours is the official one, token for token (utils/preference_data.py).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
from pathlib import Path

import torch
from transformers import TrainingArguments
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, RewardConfig, RewardTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from chat_template import IGNORE_INDEX
from utils.attention import NAME as VARLEN
from train_args.base import REFERENCE_FREE_LOSSES
from utils.model import (apply_peft, build_model, build_peft_config, build_quant_config, compile_layers,
                         count_parameters, prepare_quantized, resolve_dtype)
from utils.offload import offload_callbacks
from utils.preference_data import build_preference_datasets
from utils.run_folder import RunIdentity, claim_output_dir, mark_finished, rank0, train
from utils.score import finish_score, score_held_out
from utils.step_plan import resolve
from utils.save import plot_loss_curve, save_outputs, trainable_snapshot, verify_outputs
from utils.trainer import StopOnNonFiniteLoss

PLOTTED_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


class DojoDPOTrainer(DPOTrainer):
    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset  # prompt_ids/chosen_ids/rejected_ids already, from chat_template


class DojoKTOTrainer(KTOTrainer):
    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        """prompt_ids/completion_ids/label already; only trl's KL completions are added (as trl does: each batch's
        answers rotated by one, so that every prompt meets another prompt's answer)."""
        if not self.calculate_KL:
            return dataset

        def rotate(batch):
            return {"KL_completion_ids": batch["completion_ids"][-1:] + batch["completion_ids"][:-1]}
        return dataset.map(rotate, batched=True, batch_size=args.per_device_train_batch_size)


def legacy_pair_row(feature, model=None) -> dict:
    """CPO/ORPO's tokenized columns (whole sequences, prompt labels masked) from a row in trl's current form."""
    prompt, row = feature["prompt_ids"], {}
    for side in ("chosen", "rejected"):
        ids = prompt + feature[f"{side}_ids"]
        row.update({f"{side}_input_ids": ids, f"{side}_attention_mask": [1] * len(ids),
                    f"{side}_labels": [IGNORE_INDEX] * len(prompt) + feature[f"{side}_ids"]})
    return {**row, "prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}


def trl_config(args, config_cls, **values):
    """trl's config for the trainer: every TrainingArguments field from our TrainArgs, plus the method's values."""
    common = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainingArguments) if f.init}
    return config_cls(**{**common, **values})


def dpo_loss_fields(pref_loss: str, pref_ftx: float) -> dict:
    """DPOConfig's loss fields: the preference loss, plus trl's "sft" term weighted pref_ftx when it is set."""
    if not pref_ftx:
        return dict(loss_type=[pref_loss])
    return dict(loss_type=[pref_loss, "sft"], loss_weights=[1.0, pref_ftx])


def trainer_and_config(args):
    """The trl trainer class for the run's stage and loss, and its config. max_length None: rows come cut to
    max_len by utils/preference_data.py."""
    reference = dict(precompute_ref_log_probs=args.precompute_ref_log_probs, max_length=None, beta=args.beta)
    if args.stage == "dpo" and args.pref_loss == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer
        trainer_cls = type("DojoORPOTrainer", (ORPOTrainer,), {"tokenize_row": staticmethod(legacy_pair_row)})
        return trainer_cls, trl_config(args, ORPOConfig, beta=args.beta)
    if args.stage == "dpo" and args.pref_loss in ("simpo", "cpo"):
        from trl.experimental.cpo import CPOConfig, CPOTrainer
        simpo = args.pref_loss == "simpo"
        cpo_alpha = args.cpo_alpha if args.cpo_alpha is not None else (0.0 if simpo else 1.0)
        trainer_cls = type("DojoCPOTrainer", (CPOTrainer,), {"tokenize_row": staticmethod(legacy_pair_row)})
        return trainer_cls, trl_config(args, CPOConfig, loss_type="simpo" if simpo else "sigmoid", beta=args.beta,
                                       simpo_gamma=args.simpo_gamma, label_smoothing=args.label_smoothing,
                                       cpo_alpha=cpo_alpha)
    if args.stage == "dpo":
        return DojoDPOTrainer, trl_config(args, DPOConfig, label_smoothing=args.label_smoothing,
                                          **dpo_loss_fields(args.pref_loss, args.pref_ftx), **reference)
    if args.stage == "kto":
        return DojoKTOTrainer, trl_config(args, KTOConfig, desirable_weight=args.kto_desirable_weight,
                                          undesirable_weight=args.kto_undesirable_weight,
                                          train_sampling_strategy="sequential", **reference)  # trl's KL pairing
    return RewardTrainer, trl_config(args, RewardConfig, max_length=None)


def reward_row(feature) -> dict:
    """RewardTrainer's tokenized form: each side's whole sequence, prompt + answer (scored at its last token)."""
    return {side: feature["prompt_ids"] + feature[f"{side[:-4]}_ids"] for side in ("chosen_ids", "rejected_ids")}


def build_reward_model(args, vocab_size: int):
    """A sequence-classification model with one output (the reward) on the starting model's weights; its new head
    is trained and saved with the adapter (peft's SEQ_CLS task keeps it in modules_to_save)."""
    from transformers import AutoModelForSequenceClassification, set_seed
    set_seed(args.seed)  # the new head's random init
    kwargs = dict(num_labels=1, dtype=resolve_dtype(args), attn_implementation=args.attn_implementation,
                  trust_remote_code=args.trust_remote_code)
    if args.train_mode == "qlora":
        kwargs["quantization_config"] = build_quant_config(kwargs["dtype"])
    model = AutoModelForSequenceClassification.from_pretrained(args.model_name_or_path, **kwargs)
    if vocab_size > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(vocab_size, pad_to_multiple_of=64)
    model.config.use_cache = False
    return prepare_quantized(model, args)


def build_reference(args, model, vocab_size: int):
    """The frozen reference policy, or None where trl needs no separate model: reference-free losses, an adapter
    run (trl switches the adapter off: the starting model, no second copy), precomputed reference log-probs (trl
    computes them with the starting model before the first step)."""
    if args.stage == "rm" or (args.stage == "dpo" and args.pref_loss in REFERENCE_FREE_LOSSES):
        return None
    if args.ref_model_path:
        ref_args = copy.copy(args)
        ref_args.model_name_or_path = args.ref_model_path
        reference = build_model(ref_args, vocab_size)
    elif args.train_mode != "full" or args.precompute_ref_log_probs:
        return None
    else:
        reference = copy.deepcopy(model)
    return reference.eval().requires_grad_(False)


def drop_copied_adapter(trainer, args) -> None:
    """trl copies the adapter of a PeftModel it is given into a frozen "ref" adapter (it cannot tell a new adapter
    from a pretrained one). Ours is new: with B = 0 (the default and gaussian inits, LoRA or DoRA) it adds nothing,
    so the adapter switched off is the same reference, without the copy's memory and compute. Inits that move the
    base weights (pissa, olora, ...) keep the copy."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if "ref" in getattr(model, "peft_config", {}) and str(args.init_lora_weights).lower() in ("default", "gaussian",
                                                                                               "true"):
        model.delete_adapter("ref")
        model.set_adapter("default")


def build_preference_trainer(model, reference, args, tokenizer, train_set, eval_set, callbacks=()):
    trainer_cls, config = trainer_and_config(args)
    if args.stage == "rm":
        train_set = train_set.map(reward_row, remove_columns=train_set.column_names)
        eval_set = eval_set and eval_set.map(reward_row, remove_columns=eval_set.column_names)
    kwargs = dict(model=model, args=config, train_dataset=train_set, eval_dataset=eval_set,
                  processing_class=tokenizer, callbacks=[StopOnNonFiniteLoss(), *callbacks])
    if trainer_cls is DojoDPOTrainer and args.padding_free:  # the fast path: packed rows (utils/preference_fast.py)
        from utils.preference_fast import FastDPOTrainer, packed_collator
        trainer_cls, kwargs["data_collator"] = FastDPOTrainer, packed_collator(args, model, tokenizer)
    if issubclass(trainer_cls, (DojoDPOTrainer, DojoKTOTrainer)):
        kwargs["ref_model"] = reference
    dtypes = {name: p.dtype for name, p in model.named_parameters() if p.requires_grad}
    trainer = trainer_cls(**kwargs)
    # trl casts a 4-bit model's adapter to bf16 (QLoRA's bf16 recipe); ours trains in the run's dtype, as in SFT
    for name, p in trainer.model.named_parameters():
        if name in dtypes and p.dtype != dtypes[name]:
            p.data = p.data.to(dtypes[name])
    drop_copied_adapter(trainer, args)
    return trainer


def _eval_mode(model):
    """model.eval(), except that bitsandbytes must not repack 4-bit weights for its AVX512-BF16 CPU kernel, which
    asserts every output size is a multiple of 32 (tiny test models have 16)."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model.eval()


@contextlib.contextmanager
def padded_attention(model):
    """sdpa for padded batches on a model trained with varlen attention, which attends within packed rows only
    (the same attention; utils/score.py's generation does the same)."""
    varlen = getattr(model.config, "_attn_implementation", None) == VARLEN
    if varlen:
        model.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        if varlen:
            model.set_attn_implementation(VARLEN)


@torch.no_grad()
def preference_accuracy(model, dataset, tokenizer, reward_model: bool, batch_size: int = 8) -> float:
    """Fraction of pairs the model ranks right: a reward model scores chosen above rejected; a policy gives the
    chosen answer the higher mean log-prob per token. Needs no reference, so it means the same before training
    and after, for every method."""
    with padded_attention(model):
        return _preference_accuracy(model, dataset, tokenizer, reward_model, batch_size)


def _preference_accuracy(model, dataset, tokenizer, reward_model: bool, batch_size: int) -> float:
    was_training, device = model.training, next(model.parameters()).device
    _eval_mode(model)
    collate = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)
    right = 0
    for start in range(0, len(dataset), batch_size):
        batch = {k: v.to(device) for k, v in collate(dataset.select(range(start, min(start + batch_size,
                                                                                     len(dataset))))).items()}
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        if reward_model:
            score = out.logits[:, 0].float()
        else:
            logps = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)
            token_logps = logps.gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
            mask = batch["completion_mask"][:, 1:]
            score = (token_logps * mask).sum(1) / mask.sum(1)
        chosen, rejected = score.chunk(2)
        right += int((chosen > rejected).sum())
    model.train(was_training)
    return right / len(dataset)


def plot_preference_metrics(log_history: list[dict], path: Path) -> None:
    """Rewards of chosen and rejected answers, their margin and the reward accuracy, over the training steps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_rewards, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for key in PLOTTED_METRICS:
        for prefix, style in (("", "-"), ("eval_", "--")):
            points = [(h["step"], h[prefix + key]) for h in log_history if prefix + key in h]
            if points:
                ax = ax_acc if key.endswith("accuracies") else ax_rewards
                ax.plot(*zip(*points), style, marker="." if len(points) < 50 else None, label=prefix + key)
    for ax, label in ((ax_rewards, "reward (beta x log-ratio)"), (ax_acc, "reward accuracy")):
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def apply_adapter(model, args):
    """LoRA/QLoRA/DoRA as for SFT; a reward model's adapter is peft's SEQ_CLS task, which trains and saves the new
    score head in full beside the adapter."""
    if args.stage != "rm" or args.train_mode == "full":
        return apply_peft(model, args)
    from peft import get_peft_model
    return get_peft_model(model, dataclasses.replace(build_peft_config(args), task_type="SEQ_CLS"))


def run(args, tokenizer, template_name: str, plan, log):
    """One preference run (stage dpo, kto or rm); returns the trainer, or None for a dry run."""
    train_set, eval_set, score_set = build_preference_datasets(args, tokenizer, template_name, log)
    if eval_set is not None and args.eval_strategy == "no":
        args.eval_strategy, args.eval_steps = "steps", args.eval_steps or args.save_steps
    if args.dry_run:
        log("dry run: config, tokenizer and data are valid; stopping before the model is loaded")
        return None
    if rank0() and (moved := claim_output_dir(args, plan)):
        log(moved)

    vocab_size, reward_model = len(tokenizer), args.stage == "rm"
    model = build_reward_model(args, vocab_size) if reward_model else build_model(args, vocab_size=vocab_size)
    model = compile_layers(apply_adapter(model, args), args)
    reference = build_reference(args, model, vocab_size)
    trainable, total = count_parameters(model)
    log(f"model: {args.stage} ({args.pref_loss if args.stage == 'dpo' else args.stage}) {args.train_mode}, trainable "
        f"{trainable:,} of {total:,} parameters; reference: "
        + ("none (reference-free)" if reference is None and (reward_model or args.pref_loss in REFERENCE_FREE_LOSSES)
           else "a frozen model" if reference is not None else "precomputed" if args.precompute_ref_log_probs
           else "the model with its adapter switched off"))
    if args.padding_free:  # DPO's fast path (the SFT step plan's counterpart; utils/preference_fast.py)
        log(f"plan: packed rows (each micro-batch's chosen and rejected sequences in one row), attention "
            f"{args.attn_implementation}, trl's chunked log-prob head")
    offload = resolve(args).offload
    if offload:
        log("checkpointed layers' inputs in host memory (offload_checkpoints)")
    snapshot = trainable_snapshot(model)
    scored = eval_set is not None and args.stage != "kto" and rank0()  # KTO answers are unpaired: nothing to rank
    before = preference_accuracy(model, eval_set, tokenizer, reward_model) if scored else None
    score_before = score_held_out(model, tokenizer, template_name, score_set if args.score_before else None, args,
                                  "before training", log)

    trainer = build_preference_trainer(model, reference, args, tokenizer, train_set, eval_set,
                                       callbacks=[RunIdentity(plan.run_id), *offload_callbacks(offload)])
    train(trainer, plan, log)
    if eval_set is not None and not any("eval_loss" in h and h["step"] == trainer.state.global_step
                                        for h in trainer.state.log_history):
        trainer.evaluate()  # the final model's eval loss and preference metrics, for the log and the plot
    if scored:
        after = preference_accuracy(trainer.model, eval_set, tokenizer, reward_model)
        log(f"held-out preference accuracy: {before:.1%} before -> {after:.1%} after training ({len(eval_set)} "
            f"pairs; {'reward' if reward_model else 'mean log-prob per answer token'} of chosen > rejected)")
    score_after = score_held_out(trainer.model, tokenizer, template_name, score_set, args, "after training", log)

    save_outputs(trainer, tokenizer, args, template_name)
    if trainer.is_world_process_zero():
        out = Path(args.output_dir)
        plot_loss_curve(trainer.state.log_history, out / "loss_curve.png")
        if not reward_model:
            plot_preference_metrics(trainer.state.log_history, out / "preference_metrics.png")
        (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
        finish_score(out, score_before, score_after, log)
        log(verify_outputs(args, snapshot))
        log(f"done: {args.output_dir}")
        mark_finished(args.output_dir, plan, trainer.state.global_step)  # last: a run stopped before this resumes
    return trainer
