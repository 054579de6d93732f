"""yi + lora. Yi chat models (ChatML without a default system prompt).
LoRA on every linear layer but the head: the default way to adapt a model on one GPU.

Run: python main_train.py yi_lora --model_name_or_path /path/to/local/model --train_data_path data/my.jsonl
"""
from dataclasses import dataclass

from train_args.base import ChatSFTRecipe


@dataclass
class YiLoraArgs(ChatSFTRecipe):
    model_name_or_path: str = "01-ai/Yi-1.5-6B-Chat"  # a local folder works offline; a hub id needs internet
    template_name: str = "yi"
    output_dir: str = "output/yi_lora"
    train_mode: str = "lora"
