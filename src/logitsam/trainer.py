"""``from logitsam.trainer import PreferenceTrainer`` (the class lives in :mod:`logitsam.training.trainer`)."""

from logitsam.training.trainer import PreferenceTrainer, TrainingDiverged

__all__ = ["PreferenceTrainer", "TrainingDiverged"]
