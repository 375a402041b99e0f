"""The loss registry's public home (``logitsam.losses``): the functions live in :mod:`logitsam.core.losses`,
the registry in :mod:`logitsam.core.registry`."""

from logitsam.core.hparams import Range, nonnegative, one_of, positive
from logitsam.core.losses import LossOutput, PreferenceLogps
from logitsam.core.registry import (
    LOSSES,
    HyperparameterError,
    LossSpec,
    compute_loss,
    describe_losses,
    get_loss,
    register_loss,
    resolve_hparams,
    unregister_loss,
)

__all__ = [
    "LOSSES",
    "HyperparameterError",
    "LossOutput",
    "LossSpec",
    "PreferenceLogps",
    "Range",
    "compute_loss",
    "describe_losses",
    "get_loss",
    "nonnegative",
    "one_of",
    "positive",
    "register_loss",
    "resolve_hparams",
    "unregister_loss",
]
