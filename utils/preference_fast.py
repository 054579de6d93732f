"""DPO's fast path (stage dpo with `padding_free true`): the chosen and rejected log-probs of a micro-batch from one
padding-free packed row, for the policy and for the reference.

trl's DPOTrainer pads the 2B sequences of B pairs (prompt + chosen, prompt + rejected) to the longest of them: on
real pairs a third or more of every batch is padding, computed through every layer twice (policy and reference).
Here the same sequences are concatenated into one row with position ids restarting per sequence
(utils/collators.py's PaddingFreeCollator; with attn_implementation varlen, flash attention's variable-length kernel
computes each sequence against itself only).

Only the log-probs change hands. trl computes them with its fused LM head (trl.trainer.utils.add_fused_lm_head:
the log-prob, entropy, mean logit and top-1 flag of each answer token, chunk by chunk from the decoder's last hidden
states, never the full-vocabulary logits; its backward recomputes each chunk). That head runs here on the packed
row, and its per-token values are laid back into the padded batch's [2B, T-1] positions, so that everything after
them is trl's own code: every loss_type, ld_alpha, WPO weights, the metrics, precompute_ref_log_probs. Both layouts
list the answer tokens in the same order (sequence by sequence, chosen before rejected, token by token), so one
masked_scatter places them. The padded batch that trl's code reads besides is integers: its answer masks and its
token count, never fed to the model.
"""
from __future__ import annotations

import types

import torch
from trl.trainer.dpo_trainer import DataCollatorForPreference

from chat_template import IGNORE_INDEX
from utils.attention import NAME as VARLEN
from utils.preference import DojoDPOTrainer
from utils.collators import PaddingFreeCollator
from utils.step_plan import capability_problems
from utils.trainer import WalkParametersOnce

PACKED_PREFIX = "packed_"  # the packed row's keys in a batch, beside trl's padded ones
BOUNDARY_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")  # varlen attention's


class PackedPreferenceCollator:
    """trl's padded preference batch (input_ids, attention_mask, completion_mask: [2B, T], chosen rows first), plus
    the same 2B sequences packed into one row: packed_input_ids, packed_position_ids, packed_labels ([1, N]; the
    answer tokens supervised, as completion_mask marks them) and, for varlen attention, the sequence boundaries."""

    def __init__(self, pad_token_id: int, varlen: bool = False):
        self.padded = DataCollatorForPreference(pad_token_id=pad_token_id)
        self.packer = PaddingFreeCollator(varlen=varlen)

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.padded(examples)
        sequences = [{"input_ids": e["prompt_ids"] + e[f"{side}_ids"],
                      "labels": [IGNORE_INDEX] * len(e["prompt_ids"]) + e[f"{side}_ids"]}
                     for side in ("chosen", "rejected") for e in examples]  # the padded batch's row order
        row = self.packer.pack(sequences, bucket=0)
        batch.update({PACKED_PREFIX + k: row.pop(k) for k in ("input_ids", "position_ids", "labels")})
        # where the answer tokens' log-probs sit in the packed row's [N-1] per-token outputs: gathered by index,
        # with no host synchronisation (a boolean mask would need one)
        batch[PACKED_PREFIX + "answer_index"] = (batch["packed_labels"][0, 1:] != IGNORE_INDEX).nonzero()[:, 0]
        return {**batch, **row}  # row: the boundaries, with varlen


def relayout(output, padded_labels: torch.Tensor, answer_index: torch.Tensor):
    """trl's FusedCausalLMOutput of the packed row ([1, N-1] per-token fields) in the padded batch's shape: each
    field's values at the packed answer tokens (answer_index), in order, placed at the padded answer tokens
    ([2B, T-1])."""
    padded_mask = padded_labels[:, 1:] != IGNORE_INDEX
    for name in ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1"):
        value = getattr(output, name)
        if value is not None:
            answers = value[0].index_select(0, answer_index)
            setattr(output, name, value.new_zeros(padded_mask.shape).masked_scatter(padded_mask, answers))
    output.label_mask = padded_mask
    return output


def install_packed_forward(causal_lm) -> None:
    """Make a causal LM that trl gave its fused LM head compute it on the packed row when a batch carries one: the
    model's call with fused_lm_head=True and the packed keys returns what trl's head returns for the padded batch.
    Any other call (generation, a plain forward, a batch without a packed row) is trl's forward unchanged."""
    if getattr(causal_lm.forward, "packs_preference_rows", False):  # already ours (trl patches anew per trainer)
        return
    fused_forward = causal_lm.forward  # trl's (add_fused_lm_head), bound to the model

    def forward(self, *args, fused_lm_head=False, labels=None, **kwargs):
        packed = {k[len(PACKED_PREFIX):]: kwargs.pop(k) for k in list(kwargs) if k.startswith(PACKED_PREFIX)}
        if not (fused_lm_head and packed):
            return fused_forward(*args, fused_lm_head=fused_lm_head, labels=labels, **kwargs)
        boundaries = {k: kwargs.pop(k) for k in BOUNDARY_KEYS if k in kwargs}
        kwargs.pop("input_ids", None), kwargs.pop("attention_mask", None)  # the padded batch: not fed to the model
        out = fused_forward(input_ids=packed["input_ids"], position_ids=packed["position_ids"],
                            labels=packed["labels"], fused_lm_head=True, **boundaries, **kwargs)
        return relayout(out, labels, packed["answer_index"])

    forward.packs_preference_rows = True
    causal_lm.forward = types.MethodType(forward, causal_lm)


def check_packable(model) -> None:
    """The model's capability table row (utils/step_plan.py) must allow packed rows."""
    problems = capability_problems(getattr(model, "config", None), padding_free=True)
    if problems:
        raise ValueError(problems[0])


class FastDPOTrainer(WalkParametersOnce, DojoDPOTrainer):
    """trl's DPOTrainer on packed rows (build it with a PackedPreferenceCollator): trl's loss and metrics, its log-prob
    head on the packed row, and the Trainer's per-step walks over every parameter done once (WalkParametersOnce)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._install_packed_forward()

    def _install_packed_forward(self) -> None:
        """On the policy (under peft's wrapper, where trl put its head) and on a separate reference model."""
        for model in (self.model, self.ref_model):
            if model is not None:
                model = self.accelerator.unwrap_model(model)
                install_packed_forward(model.get_base_model() if hasattr(model, "get_base_model") else model)

    def _precompute_ref_logps(self, *args, **kwargs):
        self._install_packed_forward()  # trl precomputes inside its __init__, before ours installs the forward
        return super()._precompute_ref_logps(*args, **kwargs)


def packed_collator(args, model, tokenizer) -> PackedPreferenceCollator:
    """The fast path's collator, for a model whose attention keeps packed sequences apart."""
    check_packable(model)
    return PackedPreferenceCollator(tokenizer.pad_token_id or 0, varlen=args.attn_implementation == VARLEN)
