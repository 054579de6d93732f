"""qwen3 + lora. Qwen3 hybrid-thinking models; put reasoning in a `reasoning_content` field.
LoRA on every linear layer but the head: the default way to adapt a model on one GPU.

Run: python main_train.py qwen3_lora --model_name_or_path /path/to/local/model --train_data_path data/my.jsonl
"""
from dataclasses import dataclass, field

from train_args.base import TrainArgs


@dataclass
class Qwen3LoraArgs(TrainArgs):
    model_name_or_path: str = "Qwen/Qwen3-0.6B"  # a local folder works offline; a hub id needs internet
    template_name: str = "qwen3"
    train_data_path: list[str] = field(default_factory=lambda: ["data/my_sft.jsonl"])
    eval_ratio: float = 0.02               # hold out 2% for eval loss
    max_len: int = 2048
    output_dir: str = "output/qwen3_lora"
    train_mode: str = "lora"
    lora_rank: int = 16
    lora_alpha: int = 32                   # update scale alpha/r = 2
    lora_dropout: float = 0.05
    learning_rate: float = 0.0002
    num_train_epochs: float = 2.0
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 4   # 16 samples per optimizer step
    save_steps: float = 200
    logging_steps: float = 10
