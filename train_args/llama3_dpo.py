"""llama3 + dpo (lora). Llama 3 / 3.1 / 3.2 instruct models.
LoRA on every linear layer but the head; the reference is the same weights with the adapter off.
Data: preference pairs in any shape of README.md "Preference training".

Run: python main_train.py llama3_dpo --model_name_or_path /path/to/sft/model --train_data_path data/my_pairs.jsonl
"""
from dataclasses import dataclass

from train_args.base import ChatDPORecipe


@dataclass
class Llama3DpoArgs(ChatDPORecipe):
    model_name_or_path: str = "meta-llama/Llama-3.2-1B-Instruct"  # a local folder works offline; a hub id: internet
    template_name: str = "llama3"
    output_dir: str = "output/llama3_dpo"
    train_mode: str = "lora"
