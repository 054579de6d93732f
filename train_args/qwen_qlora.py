"""qwen + qlora. Qwen1.5 / Qwen2 / Qwen2.5 chat models (ChatML).
QLoRA: the frozen base is stored in 4-bit NF4 (double-quantized), LoRA trains on top in bf16.

Run: python main_train.py qwen_qlora --model_name_or_path /path/to/local/model --train_data_path data/my.jsonl
"""
from dataclasses import dataclass

from train_args.base import ChatSFTRecipe


@dataclass
class QwenQloraArgs(ChatSFTRecipe):
    model_name_or_path: str = "Qwen/Qwen2.5-0.5B-Instruct"  # a local folder works offline; a hub id needs internet
    template_name: str = "qwen"
    output_dir: str = "output/qwen_qlora"
    train_mode: str = "qlora"
