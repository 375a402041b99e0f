"""Checks of command-line values made before any work: a ConfigError naming the option."""

from __future__ import annotations

import math
import os
import tempfile

from logitsam.errors import ConfigError


def out_dir(path: str, option: str) -> None:
    """Create ``path`` (a directory) and check a file can be written in it, before any work:
    ConfigError naming ``option`` otherwise (a file in the way, no permission, /proc, ...)."""
    from logitsam.training.rundir import check_output_dir

    check_output_dir(path, option)
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ConfigError(f"{option}: cannot write into {path!r}: {e.strerror or e}") from None


def out_file(path: str, option: str, inputs: tuple[str, ...] = ()) -> None:
    """``path`` can be written as a file and is none of the command's ``inputs``: an input file, or an
    existing file inside an input directory (a model's config.json), is never written over."""
    if os.path.isdir(path):
        raise ConfigError(f"{option}: {path!r} is a directory, not a file")
    out = os.path.realpath(path)
    for source in inputs:
        src = os.path.realpath(source)
        inside = os.path.isdir(src) and os.path.isfile(out) and out.startswith(src + os.sep)
        if out == src or inside:
            raise ConfigError(f"{option}: {path!r} is an input of this command ({source}); writing there would "
                              "replace it — choose another file")  # fmt: skip
    out_dir(os.path.dirname(os.path.abspath(path)), option)


def at_least(value: float, low: float, option: str) -> None:
    if not math.isfinite(value) or value < low:
        raise ConfigError(f"{option}: must be ≥ {low:g}, got {value!r}")


def check_seed(value: int, option: str = "--seed") -> None:
    if not 0 <= value < 2**32:
        raise ConfigError(f"{option}: must be in [0, 2**32), got {value}")
