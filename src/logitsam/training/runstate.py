"""The run directory's state record, ``run_state.json``: what of a run is complete (written atomically).

- ``config_digests``: per checkpoint step, the digests of the config.yaml files written by resumes from
  that checkpoint. Every resume rewrites config.yaml (``resume_from_checkpoint`` itself changes), while the
  checkpoint's marker holds the digest of the config.yaml it was saved under; the resume check accepts
  both, so a resume killed before its first checkpoint can be resumed again. A hand edit matches neither.
"""

from __future__ import annotations

import json
import os
from typing import Any

from logitsam.config import schema as config_mod
from logitsam.config.schema import Config
from logitsam.training.commit import sampled_digest
from logitsam.training.rundir import STATE

_KEEP = 8  # config digests kept per checkpoint step (each resume from it adds one)


def read_state(output_dir: str) -> dict[str, Any]:
    """The state record of ``output_dir`` ({} when there is none or it is unreadable: nothing is complete)."""
    try:
        with open(os.path.join(output_dir, STATE), encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _write(output_dir: str, state: dict[str, Any]) -> None:
    path = os.path.join(output_dir, STATE)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def start_run(output_dir: str, resolved: Config, resumed_step: int | None) -> None:
    """Before training: config.yaml becomes ``resolved``.

    The digest of the new config.yaml is recorded (for a resume, under the resumed checkpoint's step) before
    config.yaml is replaced, so a kill between the two leaves either file accepted."""
    path = os.path.join(output_dir, "config.yaml")
    config_mod.save(resolved, path + ".tmp")
    state = read_state(output_dir) if resumed_step is not None else {}
    if resumed_step is not None:
        accepted = state.setdefault("config_digests", {}).setdefault(str(resumed_step), [])
        digest = sampled_digest(path + ".tmp")
        if digest not in accepted:
            accepted[:] = [*accepted, digest][-_KEEP:]
    _write(output_dir, state)
    os.replace(path + ".tmp", path)


def accepted_config_digests(folder: str, step: int | None) -> list[str]:
    """Digests of the config.yaml files that resumes from checkpoint ``step`` wrote in ``folder``."""
    found = read_state(folder).get("config_digests", {})
    digests = found.get(str(step), []) if isinstance(found, dict) else []
    return [d for d in digests if isinstance(d, str)] if isinstance(digests, list) else []

