"""phi3 + lora. Phi-3 / Phi-3.5 instruct.
LoRA on every linear layer but the head: the default way to adapt a model on one GPU.

Run: python main_train.py phi3_lora --model_name_or_path /path/to/local/model --train_data_path data/my.jsonl
"""
from dataclasses import dataclass

from train_args.base import ChatSFTRecipe


@dataclass
class Phi3LoraArgs(ChatSFTRecipe):
    model_name_or_path: str = "microsoft/Phi-3.5-mini-instruct"  # a local folder works offline; a hub id needs internet
    template_name: str = "phi3"
    output_dir: str = "output/phi3_lora"
    train_mode: str = "lora"
