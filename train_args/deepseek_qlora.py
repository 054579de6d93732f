"""deepseek + qlora. DeepSeek-LLM chat (User:/Assistant: format).
QLoRA: the frozen base is stored in 4-bit NF4 (double-quantized), LoRA trains on top in bf16.

Run: python main_train.py deepseek_qlora --model_name_or_path /path/to/local/model --train_data_path data/my.jsonl
"""
from dataclasses import dataclass

from train_args.base import ChatSFTRecipe


@dataclass
class DeepseekQloraArgs(ChatSFTRecipe):
    model_name_or_path: str = "deepseek-ai/deepseek-llm-7b-chat"  # a local folder works offline; a hub id needs internet
    template_name: str = "deepseek"
    output_dir: str = "output/deepseek_qlora"
    train_mode: str = "qlora"
