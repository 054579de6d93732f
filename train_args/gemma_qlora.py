"""gemma + qlora. Gemma / Gemma-2 instruct. No system role: drop system prompts from the data.
QLoRA: the frozen base is stored in 4-bit NF4 (double-quantized), LoRA trains on top in bf16.

Run: python main_train.py gemma_qlora --model_name_or_path /path/to/local/model --train_data_path data/my.jsonl
"""
from dataclasses import dataclass, field

from train_args.base import TrainArgs


@dataclass
class GemmaQloraArgs(TrainArgs):
    model_name_or_path: str = "google/gemma-2-2b-it"  # a local folder works offline; a hub id needs internet
    template_name: str = "gemma"
    train_data_path: list[str] = field(default_factory=lambda: ["data/my_sft.jsonl"])
    eval_ratio: float = 0.02               # hold out 2% for eval loss
    max_len: int = 2048
    output_dir: str = "output/gemma_qlora"
    train_mode: str = "qlora"
    lora_rank: int = 16
    lora_alpha: int = 32                   # update scale alpha/r = 2
    lora_dropout: float = 0.05
    learning_rate: float = 0.0002
    num_train_epochs: float = 2.0
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 4   # 16 samples per optimizer step
    save_steps: float = 200
    logging_steps: float = 10
