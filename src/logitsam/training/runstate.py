"""The run directory's state record, ``run_state.json``: what of a run is complete (written atomically).

- ``final``: the step the run ended at and the files of its final save (each with size and SHA-256) and
  whether its model card was written. It is written after those files and removed when a run starts
  training, so "finished" means the final files exist and still match: a run killed between its last
  checkpoint and the final save has no ``final``, and the resume from that checkpoint (at its last step,
  no step left) writes them instead of reporting a model that is not there.
- ``config_digests``: per checkpoint step, the digests of the config.yaml files written by resumes from
  that checkpoint. Every resume rewrites config.yaml (``resume_from_checkpoint`` itself changes), while the
  checkpoint's marker holds the digest of the config.yaml it was saved under; the resume check accepts
  both, so a resume killed before its first checkpoint can be resumed again. A hand edit matches neither.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from logitsam.config import schema as config_mod
from logitsam.config.schema import Config
from logitsam.training.checkpoints import WEIGHTS
from logitsam.training.commit import file_sha256, sampled_digest
from logitsam.training.rundir import MODEL_FILES, STATE

FINAL_FILES = (*WEIGHTS, *MODEL_FILES)  # what a final save writes (save_model: weights, model config, tokenizer)
_SHARD = re.compile(r"^(model|pytorch_model|adapter_model)-\d+-of-\d+\.(safetensors|bin)$")
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
    """Before training: the old final save no longer describes the run, and config.yaml becomes ``resolved``.

    The digest of the new config.yaml is recorded (for a resume, under the resumed checkpoint's step) before
    config.yaml is replaced, so a kill between the two leaves either file accepted."""
    path = os.path.join(output_dir, "config.yaml")
    config_mod.save(resolved, path + ".tmp")
    state = read_state(output_dir) if resumed_step is not None else {}
    state.pop("final", None)
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


def _final_files(output_dir: str) -> list[str]:
    names = (n for n in os.listdir(output_dir) if n in FINAL_FILES or _SHARD.match(n))
    return sorted(n for n in names if os.path.isfile(os.path.join(output_dir, n)))


def record_final(output_dir: str, step: int, *, model: bool, card: bool) -> None:
    """After the final save: the step, the saved files (size, SHA-256) and whether the card was written."""
    files = {}
    for name in _final_files(output_dir) if model else []:
        full = os.path.join(output_dir, name)
        files[name] = {"size": os.path.getsize(full), "sha256": file_sha256(full)}
    state = read_state(output_dir)
    state["final"] = {"step": step, "model": model, "card": card, "files": files}
    _write(output_dir, state)


def final_problem(output_dir: str, step: int, *, model: bool) -> str | None:
    """Why the run in ``output_dir`` is not finished at ``step`` (None: its final save is there and intact).

    ``model``: whether a final model is asked for (``train.save_model``)."""
    final = read_state(output_dir).get("final")
    if not isinstance(final, dict) or final.get("step") != step:
        return "no final save was recorded for that step (killed before or during it?)"
    if model and not final.get("model"):
        return "the run saved no model (train.save_model was false)"
    files = final.get("files") if isinstance(final.get("files"), dict) else {}
    if final.get("model") and not any(n in WEIGHTS or _SHARD.match(n) for n in files):
        return "the final save recorded no model weights"
    for name, saved in files.items():
        full = os.path.join(output_dir, name)
        try:
            same = os.path.getsize(full) == saved["size"] and file_sha256(full) == saved["sha256"]
        except (OSError, KeyError, TypeError):
            same = False
        if not same:
            return f"{name} is missing or changed since the final save"
    if final.get("card") and not os.path.isfile(os.path.join(output_dir, "README.md")):
        return "the model card README.md is missing"
    return None
