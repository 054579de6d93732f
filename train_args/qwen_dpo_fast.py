"""qwen + dpo (lora) on DPO's fast path: each micro-batch's chosen and rejected sequences packed into one row with
flash variable-length attention, for the policy and for the reference (the adapter off), instead of padding them to
the longest; trl's DPO loss and metrics unchanged. The same losses and gradients as qwen_dpo (CPU tests,
tests/utils/test_preference_fast.py). varlen needs torch >= 2.10 on an Ampere or newer GPU (bf16 or fp16); on a CPU
it computes the same with a block mask.

Run: python main_train.py qwen_dpo_fast --model_name_or_path /path/to/sft/model --train_data_path data/my_pairs.jsonl
"""
from dataclasses import dataclass

from train_args.qwen_dpo import QwenDpoArgs


@dataclass
class QwenDpoFastArgs(QwenDpoArgs):
    output_dir: str = "output/qwen_dpo_fast"
    padding_free: bool = True
    attn_implementation: str = "varlen"
