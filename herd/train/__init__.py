"""Training Llama-4-architecture models: `herd train` (pretraining) and its parts."""

from herd.train.config import TrainConfig
from herd.train.loop import read_log, train

__all__ = ["TrainConfig", "read_log", "train"]
