"""qwen + lora. Qwen1.5 / Qwen2 / Qwen2.5 chat models (ChatML).
LoRA on every linear layer but the head: the default way to adapt a model on one GPU.

Run: python main_train.py qwen_lora --model_name_or_path /path/to/local/model --train_data_path data/my.jsonl
"""
from dataclasses import dataclass

from train_args.base import ChatSFTRecipe


@dataclass
class QwenLoraArgs(ChatSFTRecipe):
    model_name_or_path: str = "Qwen/Qwen2.5-0.5B-Instruct"  # a local folder works offline; a hub id needs internet
    template_name: str = "qwen"
    output_dir: str = "output/qwen_lora"
    train_mode: str = "lora"
