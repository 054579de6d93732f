"""yi + qlora. Yi chat models (ChatML without a default system prompt).
QLoRA: the frozen base is stored in 4-bit NF4 (double-quantized), LoRA trains on top in bf16.

Run: python main_train.py yi_qlora --model_name_or_path /path/to/local/model --train_data_path data/my.jsonl
"""
from dataclasses import dataclass

from train_args.base import ChatSFTRecipe


@dataclass
class YiQloraArgs(ChatSFTRecipe):
    model_name_or_path: str = "01-ai/Yi-1.5-6B-Chat"  # a local folder works offline; a hub id needs internet
    template_name: str = "yi"
    output_dir: str = "output/yi_qlora"
    train_mode: str = "qlora"
