"""qwen + dpo (lora). Qwen1.5 / Qwen2 / Qwen2.5 chat models (ChatML).
LoRA on every linear layer but the head; the reference is the same weights with the adapter off.
Data: preference pairs in any shape of README.md "Preference training".

Run: python main_train.py qwen_dpo --model_name_or_path /path/to/sft/model --train_data_path data/my_pairs.jsonl
"""
from dataclasses import dataclass

from train_args.base import ChatDPORecipe


@dataclass
class QwenDpoArgs(ChatDPORecipe):
    model_name_or_path: str = "Qwen/Qwen2.5-0.5B-Instruct"  # a local folder works offline; a hub id needs internet
    template_name: str = "qwen"
    output_dir: str = "output/qwen_dpo"
    train_mode: str = "lora"
