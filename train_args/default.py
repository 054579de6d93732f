"""The default run (`python main_train.py`): offline, CPU-friendly, a few minutes.

Full fine-tuning of a fresh Etude-tiny (random weights) on the synthetic skills in data/skills/ (written by
data/make_skills.py), with eval loss and a before/after exact-match score on held-out prompts, ending with the
command to chat with the result.
"""
from dataclasses import dataclass, field

from train_args.base import TrainArgs


@dataclass
class DefaultArgs(TrainArgs):
    model_name_or_path: str = "etude-tiny"
    tokenizer_name_or_path: str | None = "data/skills/tokenizer"  # 512 tokens fitted to the skills (make_skills.py)
    train_data_path: list[str] = field(default_factory=lambda: ["data/skills/train.jsonl"])
    eval_data_path: list[str] | None = field(default_factory=lambda: ["data/skills/eval.jsonl"])
    score_data_path: list[str] | None = field(default_factory=lambda: ["data/skills/eval.jsonl"])
    score_samples: int = 100               # a tiny model answers fast: score the whole held-out set
    output_dir: str = "output/etude_default"
    train_mode: str = "full"
    max_len: int = 64
    max_steps: int = 800                   # the held-out skills are learned in minutes on a CPU (README)
    per_device_train_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3            # a larger rate plateaus without learning the skills
    warmup_steps: float = 0.05
    eval_steps: float = 400
    logging_steps: float = 50
    save_steps: float = 800
    activation_checkpointing: bool = False  # a 17M model needs no activation savings
