"""Qwen full fine-tuning: every weight trains. Needs ~16 bytes per parameter of GPU memory for weights, grads and
AdamW states (a 0.5B model: ~8 GB before activations); use a 10x smaller learning rate than LoRA.

Run: python main_train.py qwen_full --model_name_or_path /path/to/Qwen2.5-0.5B-Instruct --train_data_path data/my.jsonl
"""
from dataclasses import dataclass

from train_args.base import ChatSFTRecipe


@dataclass
class QwenFullArgs(ChatSFTRecipe):
    model_name_or_path: str = "Qwen/Qwen2.5-0.5B-Instruct"
    template_name: str = "qwen"
    output_dir: str = "output/qwen_full"
    train_mode: str = "full"
    learning_rate: float = 1e-5
    weight_decay: float = 0.01
