"""Checkpoints that count only when complete, resuming from the newest complete one, metrics trimming.

HF ``Trainer._save_checkpoint`` writes ``checkpoint-N`` in place (model, optimizer, scheduler, RNG
state, then ``trainer_state.json``), so a process killed mid-save leaves a partial directory with
the newest step number — and HF's own ``resume_from_checkpoint=True`` picks the highest number.
Renaming a finished temporary directory would need an override of ``_save_checkpoint`` (a Trainer
subclass); a callback cannot redirect the write. So completion is recorded instead — a commit
protocol, subclass-free:

- the markers are written by :class:`~logitsam.training.commit.AtomicCheckpoints` (commit.py);
- :func:`verify_checkpoint` lists what a checkpoint lacks: model weights (every ``*.safetensors``
  file's header is read and must cover the whole file: a truncated or corrupt file does not
  count), optimizer and scheduler state, a ``trainer_state.json`` that transformers' ``TrainerState``
  loads with the fields the Trainer reads on resume, RNG state, optimizer / scheduler / RNG files that
  are intact torch zip archives (every entry's CRC-32 checked), and — where markers exist — every
  rank's marker and unchanged file sizes and SHA-256 digests of every file's whole content;
  ``global_step`` equal to the N of ``checkpoint-N``.
  Checkpoints from plain HF (no markers) are judged by their files;
- :func:`resolve_resume` turns ``train.resume_from_checkpoint`` (a path, ``last`` or true) into a
  checkpoint directory: ``last`` is the newest *complete* ``checkpoint-N`` (partial ones are skipped
  with a warning), so a kill mid-save leaves the previous checkpoint as the one resumed from;
- :func:`trim_metrics` drops ``metrics.jsonl`` records after the checkpoint's step (and those of its
  step logged after it was saved): a killed run logged steps that the resumed run logs again.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import zipfile
from typing import Any

import torch
from transformers import TrainerState
from transformers.trainer_pt_utils import safe_globals

from logitsam.errors import ConfigError, one_line
from logitsam.models import broken_safetensors
from logitsam.training.commit import MARKER, SAVING, digest_or_none, file_sha256

log = logging.getLogger(__name__)
KEY = "train.resume_from_checkpoint"
_CKPT = re.compile(r"^checkpoint-(\d+)$")
_MARKER = re.compile(re.escape(MARKER) + r"-(\d+)-of-(\d+)$")
WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)


def _any(path: str, *patterns: str) -> bool:
    return any(glob.glob(os.path.join(path, p)) for p in patterns)


def checkpoint_step(path: str) -> int | None:
    """``global_step`` recorded in the checkpoint's trainer_state.json (None if unreadable)."""
    try:
        with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as f:
            step = json.load(f).get("global_step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None


def checkpoint_problems(path: str) -> list[str]:
    """What ``path`` lacks to be resumed from exactly (empty: complete)."""
    if not os.path.isdir(path):
        return ["not a directory"]
    problems = []
    deepspeed = _any(path, "global_step*")  # DeepSpeed keeps model/optimizer state in global_stepN/
    if not (_any(path, *WEIGHTS, "pytorch_model_fsdp*") or deepspeed):
        problems.append("model weights (model.safetensors or similar)")
    if not (_any(path, "optimizer.pt", "optimizer.bin", "optimizer_*") or deepspeed):
        problems.append("optimizer state (optimizer.pt)")
    if not (os.path.isfile(os.path.join(path, "scheduler.pt")) or deepspeed):
        problems.append("scheduler state (scheduler.pt)")
    broken = broken_safetensors(path)  # a truncated or corrupt weights file
    if broken:
        problems.append(f"readable weights ({broken})")
    broken = broken_torch_files(path)
    if broken:
        problems.append(f"readable training state ({broken})")
    state = _trainer_state_problem(path)
    if state:
        problems.append(state)
    named = _CKPT.match(os.path.basename(os.path.normpath(path)))
    step = checkpoint_step(path)
    if named and step is not None and step != int(named.group(1)):
        problems.append(f"trainer_state.json at its own step (global_step {step} in {os.path.basename(path)})")
    if not _any(path, "rng_state.pth", "rng_state_*.pth"):
        problems.append("RNG state (rng_state.pth)")
    problems += _marker_problems(path)
    saving = sorted(n for n in _listdir(path) if n.startswith(SAVING))
    if saving:
        problems.append(f"a finished save ({saving[0]}: a save into it started and did not finish)")
    return problems


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


# What transformers.Trainer reads from trainer_state.json when it resumes (TrainerState fields).
_STATE_INTS = ("global_step", "max_steps", "train_batch_size")
_STATE_NUMBERS = ("epoch", "logging_steps", "eval_steps", "save_steps")


def _trainer_state_problem(path: str) -> str | None:
    """Why ``path/trainer_state.json`` cannot resume a Trainer (None: it can)."""

    file = os.path.join(path, "trainer_state.json")
    if checkpoint_step(path) is None:
        return "trainer_state.json with global_step (missing or unreadable)"
    try:
        state = TrainerState.load_from_json(file)
        with open(file, encoding="utf-8") as f:
            given = set(json.load(f))
    except (OSError, ValueError, TypeError, AttributeError) as e:  # not an object, fields TrainerState lacks
        return f"a trainer_state.json that transformers' TrainerState loads ({' '.join(str(e).split())[:200]})"
    absent = [k for k in (*_STATE_INTS, *_STATE_NUMBERS, "log_history") if k not in given]
    bad = [k for k in _STATE_INTS if k in given and not (_is_int(v := getattr(state, k)) and v >= (k != "global_step"))]
    bad += [k for k in _STATE_NUMBERS if k in given and not (_is_number(v := getattr(state, k)) and v >= 0)]
    if not isinstance(state.log_history, list) or not all(isinstance(r, dict) for r in state.log_history):
        bad.append("log_history")
    if not isinstance(state.stateful_callbacks, dict):
        bad.append("stateful_callbacks")
    if not (absent or bad):
        return None
    what = [f"lacks {', '.join(absent)}"] if absent else []
    what += [f"bad {', '.join(bad)}"] if bad else []
    return f"a trainer_state.json with the fields the Trainer reads on resume ({'; '.join(what)})"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _marker_problems(path: str) -> list[str]:
    markers = {}
    for name in os.listdir(path):
        m = _MARKER.match(name)
        if m:
            markers[int(m.group(1))] = (int(m.group(2)), os.path.join(path, name))
    if not markers:
        return []  # a checkpoint without AtomicCheckpoints: its files decide
    world = max(w for w, _ in markers.values())
    missing = [r for r in range(world) if r not in markers]
    if missing:
        return [f"completion markers of ranks {missing} (save interrupted on those ranks)"]
    changed, corrupt = [], []
    for _, marker in markers.values():
        try:
            with open(marker, encoding="utf-8") as f:
                saved = json.load(f)
            sizes = saved["files"]
            # full SHA-256 since they exist; older markers: sampled digests, or sizes only
            full_digests, sampled = saved.get("sha256", {}), saved.get("digests", {})
            for name, size in sizes.items():
                file = os.path.join(path, name)
                if _size(file) != size:
                    changed.append(name)
                elif name in full_digests:
                    if digest_or_none(file, file_sha256) != full_digests[name]:
                        corrupt.append(name)
                elif name in sampled and digest_or_none(file) != sampled[name]:
                    changed.append(name)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return [f"a readable completion marker ({os.path.basename(marker)})"]
    problems = [f"files as completed ({', '.join(sorted(changed)[:3])} changed or vanished since)"] if changed else []
    if corrupt:
        problems.append(f"files as saved ({', '.join(sorted(corrupt)[:3])} changed: the content no longer matches "
                        "the SHA-256 recorded when the checkpoint was saved)")  # fmt: skip
    return problems


TORCH_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "rng_state_*.pth")


def broken_torch_files(path: str) -> str | None:
    """The first of ``path``'s optimizer / scheduler / RNG files that is not an intact torch.save zip
    archive (structure and every entry's CRC-32: any changed byte of the data), or None.

    Reads them whole, once per resume (the Trainer reads them right after); what a resume would
    otherwise find only inside ``trainer.train()``, after metrics were trimmed."""
    for pattern in TORCH_FILES:
        for full in sorted(glob.glob(os.path.join(path, pattern))):
            try:
                with zipfile.ZipFile(full) as zf:
                    bad = zf.testzip()
                if bad is not None:
                    return f"{full} is corrupt (entry {bad} fails its CRC)"
                with safe_globals():  # as the Trainer loads it; mmap: the tensor data is not read again
                    torch.load(full, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:
                return f"{full} is truncated or corrupt ({type(e).__name__}: {one_line(e, 200)})"
    return None


def saved_config_digest(checkpoint: str) -> str | None:
    """The digest of the run's config.yaml when ``checkpoint`` was completed (None: not recorded)."""
    for name in _listdir(checkpoint):
        if _MARKER.match(name):
            try:
                with open(os.path.join(checkpoint, name), encoding="utf-8") as f:
                    digest = json.load(f).get("config_digest")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(digest, str):
                return digest
    return None


def _size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def verify_checkpoint(path: str) -> None:
    """ConfigError listing what ``path`` lacks (model weights, optimizer.pt, scheduler.pt, ...)."""
    problems = checkpoint_problems(path)
    if problems:
        raise ConfigError(f"{KEY}: checkpoint {path!r} is incomplete: missing {'; '.join(problems)}")


def list_checkpoints(output_dir: str) -> list[str]:
    """``checkpoint-N`` directories of ``output_dir``, newest (highest N) first (the one place that scans them)."""
    if not os.path.isdir(output_dir):
        return []
    found = [
        (int(m.group(1)), n)
        for n in os.listdir(output_dir)
        if (m := _CKPT.match(n)) and os.path.isdir(os.path.join(output_dir, n))
    ]
    return [os.path.join(output_dir, n) for _, n in sorted(found, reverse=True)]


def resolve_resume(output_dir: str, value: str | bool | None, *, allow_incomplete: bool = False) -> str | None:
    """The checkpoint directory to resume from, or None when not resuming.

    ``value``: None/false (no resume), a checkpoint path, or ``last``/true (the newest complete
    ``checkpoint-N`` in ``output_dir``). An incomplete checkpoint is a ConfigError unless
    ``allow_incomplete`` (then a loud warning).
    """
    if value is None or value is False:
        return None
    if value is True or (isinstance(value, str) and value.strip().lower() == "last"):
        candidates = list_checkpoints(output_dir)
        if not candidates:
            raise ConfigError(
                f"{KEY}: no checkpoint-N directory in {output_dir!r} to resume from (the run there "
                "stopped before its first save); start it again with --train.overwrite_output_dir=true"
            )
        found = {}  # each judged once: judging reads every file whole
        for path in candidates:
            found[path] = checkpoint_problems(path)
            if not found[path]:
                return path
            log.warning("skipping incomplete checkpoint %s (missing %s)", path, "; ".join(found[path]))
        newest = candidates[0]
        if not allow_incomplete or not _loadable(newest):
            way_out = (
                "set train.resume_allow_incomplete=true to resume from it anyway, or start over"
                if _loadable(newest)
                else "nothing in it can be resumed (no readable weights and trainer state); start over"
            )
            raise ConfigError(
                f"{KEY}: every checkpoint in {output_dir!r} is incomplete (newest: {newest}: missing "
                f"{'; '.join(found[newest])}); {way_out} with train.overwrite_output_dir=true "
                "(it removes the old metrics.jsonl and checkpoint-N directories) and no resume_from_checkpoint"
            )
        return resolve_resume(output_dir, newest, allow_incomplete=True)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{KEY}: expected a checkpoint directory, 'last' or true, got {value!r}")
    if not os.path.exists(value):
        raise ConfigError(f"{KEY}: {value!r} not found")
    if not os.path.isdir(value):
        raise ConfigError(f"{KEY}: {value!r} is a file, not a checkpoint directory")
    if not allow_incomplete:
        verify_checkpoint(value)
        return value
    if not _loadable(value):
        why = "no readable model weights and trainer state"
        raise ConfigError(f"{KEY}: {value!r} cannot be resumed even incomplete: {why}")
    broken = broken_torch_files(value)
    if broken:  # a missing file can be done without; a corrupt one fails inside trainer.train(), too late
        raise ConfigError(f"{KEY}: {value!r} cannot be resumed even incomplete: {broken}; remove that file to "
                          "resume without it, or start over with train.overwrite_output_dir=true")  # fmt: skip
    problems = checkpoint_problems(value)
    return _incomplete(value, problems) if problems else value


def _loadable(path: str) -> bool:
    """Whether transformers can resume from ``path`` at all (weights and a readable trainer_state.json)."""
    return (
        (_any(path, *WEIGHTS) or _any(path, "global_step*"))
        and not broken_safetensors(path)
        and (checkpoint_step(path) is not None)
    )


def _incomplete(path: str, problems: list[str]) -> str:
    log.warning(
        "!!! RESUMING FROM AN INCOMPLETE CHECKPOINT %s (missing %s): train.resume_allow_incomplete is set; "
        "the resumed run will not continue the original one exactly !!!",
        path,
        "; ".join(problems),
    )
    return path


def logged_at_step(checkpoint: str) -> int | None:
    """How many log records of the checkpoint's own step its trainer state holds (None: unreadable)."""
    step = checkpoint_step(checkpoint)
    try:
        with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as f:
            history = json.load(f)["log_history"]
        return sum(1 for r in history if isinstance(r, dict) and r.get("step") == step)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def trim_metrics(output_dir: str, step: int, kept_at_step: int | None = None) -> int:
    """Drop ``metrics.jsonl`` records with step > ``step`` and lines that are not JSON records; returns
    how many went. ``kept_at_step``: how many records of ``step`` itself the checkpoint holds; later ones
    at that step were logged after it was saved (the summary and final evaluation of a run killed in its
    final save) and go too. They are appended to ``metrics.jsonl.dropped`` (nothing written is lost) and the
    warning names the damaged lines, which a kill cannot explain unless it is the last one."""
    path = os.path.join(output_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return 0
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    kept, dropped, damaged = [], [], []
    at_step = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a record")
            at = rec.get("step")
            after = isinstance(at, (int, float)) and at > step
            if at == step and not isinstance(at, bool):
                at_step += 1
                after = kept_at_step is not None and at_step > kept_at_step
        except ValueError:  # a line torn by the kill (the last one), or damage
            after = True
            damaged.append(number)
        if after:
            dropped.append(line)
        else:
            kept.append(line)
    if dropped:
        with open(path + ".dropped", "a", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in dropped))
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in kept))
        os.replace(tmp, path)
        log.warning("metrics.jsonl: dropped %d records after step %d (logged by the interrupted run); kept in "
                    "metrics.jsonl.dropped", len(dropped) - len(damaged), step)  # fmt: skip
        inner = [n for n in damaged if n < len(lines) - (lines[-1] == "")]
        if inner:
            log.warning("metrics.jsonl:%s: not a JSON record (damaged, not torn by a kill); moved to "
                        "metrics.jsonl.dropped", ",".join(map(str, inner)))  # fmt: skip
    return len(dropped)
