"""Qwen full fine-tuning: every weight trains. Needs ~16 bytes per parameter of GPU memory for weights, grads and
AdamW states (a 0.5B model: ~8 GB before activations); use a 10x smaller learning rate than LoRA.

Run: python main_train.py qwen_full --model_name_or_path /path/to/Qwen2.5-0.5B-Instruct --train_data_path data/my.jsonl
"""
from dataclasses import dataclass, field

from train_args.base import TrainArgs


@dataclass
class QwenFullArgs(TrainArgs):
    model_name_or_path: str = "Qwen/Qwen2.5-0.5B-Instruct"
    template_name: str = "qwen"
    train_data_path: list[str] = field(default_factory=lambda: ["data/my_sft.jsonl"])
    eval_ratio: float = 0.02
    max_len: int = 2048
    output_dir: str = "output/qwen_full"
    train_mode: str = "full"
    learning_rate: float = 1e-5
    weight_decay: float = 0.01
    num_train_epochs: float = 2.0
    gradient_accumulation_steps: int = 4
