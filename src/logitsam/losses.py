"""The loss registry's public home (``logitsam.losses``); the functions live in :mod:`logitsam.core.losses`."""

from logitsam.core.losses import (
    LOSSES,
    HyperparameterError,
    LossOutput,
    LossSpec,
    PreferenceLogps,
    compute_loss,
    describe_losses,
    get_loss,
    resolve_hparams,
)

__all__ = [
    "LOSSES",
    "HyperparameterError",
    "LossOutput",
    "LossSpec",
    "PreferenceLogps",
    "compute_loss",
    "describe_losses",
    "get_loss",
    "resolve_hparams",
]
