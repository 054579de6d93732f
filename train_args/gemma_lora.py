"""gemma + lora. Gemma / Gemma-2 instruct. No system role: drop system prompts from the data.
LoRA on every linear layer but the head: the default way to adapt a model on one GPU.

Run: python main_train.py gemma_lora --model_name_or_path /path/to/local/model --train_data_path data/my.jsonl
"""
from dataclasses import dataclass

from train_args.base import ChatSFTRecipe


@dataclass
class GemmaLoraArgs(ChatSFTRecipe):
    model_name_or_path: str = "google/gemma-2-2b-it"  # a local folder works offline; a hub id needs internet
    template_name: str = "gemma"
    output_dir: str = "output/gemma_lora"
    train_mode: str = "lora"
