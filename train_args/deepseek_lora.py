"""deepseek + lora. DeepSeek-LLM chat (User:/Assistant: format).
LoRA on every linear layer but the head: the default way to adapt a model on one GPU.

Run: python main_train.py deepseek_lora --model_name_or_path /path/to/local/model --train_data_path data/my.jsonl
"""
from dataclasses import dataclass

from train_args.base import ChatSFTRecipe


@dataclass
class DeepseekLoraArgs(ChatSFTRecipe):
    model_name_or_path: str = "deepseek-ai/deepseek-llm-7b-chat"  # a local folder works offline; a hub id needs internet
    template_name: str = "deepseek"
    output_dir: str = "output/deepseek_lora"
    train_mode: str = "lora"
