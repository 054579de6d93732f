"""Qwen + DoRA: LoRA's direction update plus a learned per-column magnitude (weight-decomposed LoRA).
Slower per step than LoRA; often a little better at the same rank.

Run: python main_train.py qwen_dora --model_name_or_path /path/to/Qwen2.5-0.5B-Instruct --train_data_path data/my.jsonl
"""
from dataclasses import dataclass, field

from train_args.base import TrainArgs


@dataclass
class QwenDoraArgs(TrainArgs):
    model_name_or_path: str = "Qwen/Qwen2.5-0.5B-Instruct"
    template_name: str = "qwen"
    train_data_path: list[str] = field(default_factory=lambda: ["data/my_sft.jsonl"])
    eval_ratio: float = 0.02
    max_len: int = 2048
    output_dir: str = "output/qwen_dora"
    train_mode: str = "lora"
    use_dora: bool = True
    lora_rank: int = 16
    lora_alpha: int = 32
    learning_rate: float = 2e-4
    num_train_epochs: float = 2.0
    gradient_accumulation_steps: int = 4
