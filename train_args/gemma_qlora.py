"""gemma + qlora. Gemma / Gemma-2 instruct. No system role: drop system prompts from the data.
QLoRA: the frozen base is stored in 4-bit NF4 (double-quantized), LoRA trains on top in bf16.

Run: python main_train.py gemma_qlora --model_name_or_path /path/to/local/model --train_data_path data/my.jsonl
"""
from dataclasses import dataclass

from train_args.base import ChatSFTRecipe


@dataclass
class GemmaQloraArgs(ChatSFTRecipe):
    model_name_or_path: str = "google/gemma-2-2b-it"  # a local folder works offline; a hub id needs internet
    template_name: str = "gemma"
    output_dir: str = "output/gemma_qlora"
    train_mode: str = "qlora"
