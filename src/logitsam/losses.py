"""The loss registry's public home (``logitsam.losses``): the functions live in :mod:`logitsam.core.losses`,
the registry in :mod:`logitsam.core.registry`. ``import_loss_modules`` imports the modules that register a
run's own losses (``loss.imports``) before the loss is looked up."""

import hashlib
import importlib
import importlib.util
import os
import sys

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
from logitsam.errors import ConfigError

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
    "import_loss_modules",
    "loss_import_paths",
    "nonnegative",
    "one_of",
    "positive",
    "register_loss",
    "resolve_hparams",
    "unregister_loss",
]


def import_loss_modules(entries: list[str], key: str = "loss.imports") -> None:
    """Import each entry once: a ``.py`` file, or a module name (searched on the Python path and in the current
    directory). Their ``register_loss`` calls make their losses known by name; a failure is a ConfigError
    naming ``key`` and the entry."""
    for entry in entries:
        try:
            if entry.endswith(".py"):
                _import_file(entry)
            else:
                _import_module(entry)
        except ConfigError:
            raise
        except Exception as e:  # the user's module: any error in it is theirs to see, in one line
            raise ConfigError(f"{key}: cannot import {entry!r}: {type(e).__name__}: {e}") from None


def _import_file(path: str) -> None:
    if not os.path.isfile(path):
        raise ConfigError(f"loss.imports: {path!r} not found")
    full = os.path.realpath(path)
    name = f"logitsam_user_{os.path.basename(full)[:-3]}_{hashlib.sha256(full.encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, full)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def _import_module(name: str) -> None:
    added = os.getcwd() not in sys.path
    if added:
        sys.path.append(os.getcwd())
    try:
        importlib.import_module(name)
    finally:
        if added:
            sys.path.remove(os.getcwd())


def loss_import_paths(entries: list[str]) -> list[str]:
    """``entries`` as a run's config.yaml keeps them: a module name found in the current directory (not on the
    Python path) becomes its absolute ``.py`` file, so the run's config works from any directory."""
    out = []
    for entry in entries:
        module = sys.modules.get(entry)
        path = getattr(module, "__file__", None) if not entry.endswith(".py") else None
        here = os.path.realpath(os.getcwd())
        local = path and os.path.realpath(os.path.dirname(path)) == here and not path.endswith("__init__.py")
        out.append(os.path.realpath(path) if local else entry)
    return out
