"""qwen3 + lora. Qwen3 hybrid-thinking models; put reasoning in a `reasoning_content` field.
LoRA on every linear layer but the head: the default way to adapt a model on one GPU.

Run: python main_train.py qwen3_lora --model_name_or_path /path/to/local/model --train_data_path data/my.jsonl
"""
from dataclasses import dataclass

from train_args.base import ChatSFTRecipe


@dataclass
class Qwen3LoraArgs(ChatSFTRecipe):
    model_name_or_path: str = "Qwen/Qwen3-0.6B"  # a local folder works offline; a hub id needs internet
    template_name: str = "qwen3"
    output_dir: str = "output/qwen3_lora"
    train_mode: str = "lora"
