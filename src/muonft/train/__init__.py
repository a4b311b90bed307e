"""One training run (schedule, clipping, eval, divergence guard, checkpoints, exact resume) and
the pretraining recipe built on it."""

from muonft.train.checkpoint import load_checkpoint, save_checkpoint
from muonft.train.loop import SCHEDULES, TrainConfig, lr_multiplier, train

__all__ = ["SCHEDULES", "TrainConfig", "load_checkpoint", "lr_multiplier", "save_checkpoint",
           "train"]
