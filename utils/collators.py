"""Collators: a micro-batch of encoded samples ({input_ids, labels}, from utils/data.py) as the model's inputs.

Which collator a run uses, and with which parameters, is its StepPlan's choice (utils/step_plan.py): `build_collator`.
"""
from __future__ import annotations

import math

import torch

from chat_template import IGNORE_INDEX


class DataCollator:
    """Pad a list of {input_ids, labels} to the longest sample; padding is never supervised."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features):
        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            length = math.ceil(length / self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {"input_ids": [], "labels": [], "attention_mask": []}
        for f in features:
            pad = length - len(f["input_ids"])
            batch["input_ids"].append(list(f["input_ids"]) + [self.pad_token_id] * pad)
            batch["labels"].append(list(f["labels"]) + [IGNORE_INDEX] * pad)
            batch["attention_mask"].append([1] * len(f["input_ids"]) + [0] * pad)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


class PaddingFreeCollator:
    """Concatenate a micro-batch into one row, with position ids restarting at 0 for every sample.

    No pad token is fed or computed: on real SFT data (log-normal lengths) padding to the longest sample wastes
    more than half of every batch. transformers' attention builds a block-diagonal causal mask from the restarting
    position ids, so no token attends across samples (proven in tests/utils/test_collators.py by equal losses and
    gradients). A sample's first label is ignored so the last token of one sample never predicts the next one.

    varlen: also emit the sample boundaries (cu_seq_lens_q/k, max_length_q/k) for attn_implementation varlen.
    bucket: pad the row with one unsupervised filler sample up to a multiple of `bucket` tokens, so that rows
    come in a few fixed lengths (each CUDA graph fixes one); max_length is then the padded length, an upper
    bound that stays valid for every batch replayed through the same graph.
    max_tokens: when the row would be longer, also emit "pieces": the same samples, in order, packed into rows of
    at most max_tokens tokens each (a longer sample is a piece of its own). DojoTrainer runs forward + backward on
    each piece and sums the gradients, so the step's peak memory is set by max_tokens instead of by how long the
    micro-batch's samples happen to be. The whole row stays for counting supervised tokens and for evaluation.
    A piece's boundaries are padded with empty samples (repeats of the last boundary) to the whole micro-batch's
    count, so that under cuda_graphs a piece's shapes depend on its padded length only, as a whole row's do."""

    def __init__(self, varlen: bool = False, bucket: int = 0, pad_token_id: int = 0, max_tokens: int = 0):
        self.varlen, self.bucket, self.pad_token_id, self.max_tokens = varlen, bucket, pad_token_id, max_tokens

    def __call__(self, features):
        if not self.max_tokens or sum(len(f["input_ids"]) for f in features) <= self.max_tokens:
            return self.pack(features, self.bucket)
        pieces, size = [[]], 0
        for f in features:
            if pieces[-1] and size + len(f["input_ids"]) > self.max_tokens:
                pieces.append([])
                size = 0
            pieces[-1].append(f)
            size += len(f["input_ids"])
        slots = len(features) + 2 if self.bucket else 0  # a whole bucketed row's boundary count
        return {**self.pack(features, bucket=0), "pieces": [self.pack(piece, self.bucket, slots) for piece in pieces]}

    def pack(self, features, bucket: int, slots: int = 0) -> dict:
        ids, labels, positions, bounds = [], [], [], [0]
        for f in features:
            ids += list(f["input_ids"])
            labels += [IGNORE_INDEX] + list(f["labels"])[1:]
            positions += range(len(f["input_ids"]))
            bounds.append(len(ids))
        longest = max(b - a for a, b in zip(bounds, bounds[1:]))
        if bucket:
            filler = -len(ids) % bucket
            ids += [self.pad_token_id] * filler
            labels += [IGNORE_INDEX] * filler
            positions += range(filler)
            bounds.append(len(ids))  # always one more boundary, so the row's shape depends on its length only
            longest = len(ids)
            bounds += bounds[-1:] * (slots - len(bounds))  # empty samples: attention skips them
        batch = {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
                 "position_ids": torch.tensor([positions])}
        if self.varlen:
            cu = torch.tensor(bounds, dtype=torch.int32)
            batch.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)
        return batch


def build_collator(plan, tokenizer):
    """The plan's collator: plain (padded), or padding-free (bucketed and cut into pieces as the plan says)."""
    if not plan.padding_free:
        return DataCollator(tokenizer.pad_token_id)
    return PaddingFreeCollator(varlen=plan.varlen, bucket=plan.bucket, pad_token_id=tokenizer.pad_token_id or 0,
                               max_tokens=plan.max_tokens)
