"""phi3 + qlora. Phi-3 / Phi-3.5 instruct.
QLoRA: the frozen base is stored in 4-bit NF4 (double-quantized), LoRA trains on top in bf16.

Run: python main_train.py phi3_qlora --model_name_or_path /path/to/local/model --train_data_path data/my.jsonl
"""
from dataclasses import dataclass

from train_args.base import ChatSFTRecipe


@dataclass
class Phi3QloraArgs(ChatSFTRecipe):
    model_name_or_path: str = "microsoft/Phi-3.5-mini-instruct"  # a local folder works offline; a hub id needs internet
    template_name: str = "phi3"
    output_dir: str = "output/phi3_qlora"
    train_mode: str = "qlora"
