"""Qwen + DoRA: LoRA's direction update plus a learned per-column magnitude (weight-decomposed LoRA).
Slower per step than LoRA; often a little better at the same rank.

Run: python main_train.py qwen_dora --model_name_or_path /path/to/Qwen2.5-0.5B-Instruct --train_data_path data/my.jsonl
"""
from dataclasses import dataclass

from train_args.base import ChatSFTRecipe


@dataclass
class QwenDoraArgs(ChatSFTRecipe):
    model_name_or_path: str = "Qwen/Qwen2.5-0.5B-Instruct"
    template_name: str = "qwen"
    output_dir: str = "output/qwen_dora"
    train_mode: str = "lora"
    use_dora: bool = True
    factored_dora_norm: bool = True  # the same norms as peft's, without building W + sBA in every forward
    learning_rate: float = 2e-4
