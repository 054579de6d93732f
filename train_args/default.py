"""The default run (python main_train.py): a quick, offline job. Placeholder until the Etude one-click run lands."""
from dataclasses import dataclass

from train_args.base import TrainArgs


@dataclass
class DefaultArgs(TrainArgs):
    model_name_or_path: str = "etude-tiny"
    train_mode: str = "full"
    learning_rate: float = 1e-3
