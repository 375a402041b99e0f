"""The output directory of a run: checked before anything is written, owned while the run lasts.

- ``check_output_dir``: the path is usable (not empty, not a file, not under a file, writable).
- ``claim``: a context manager that holds ``<output_dir>/.logitsam.lock`` (created with O_EXCL,
  holding the pid and host) for the whole run, so two concurrent runs cannot write into the same
  directory, and releases it on exit, errors included. A lock left by a dead process on this host
  is taken over with a warning; a lock of a live process, or of another host (whose processes we
  cannot see), is an error that says how to remove it.
- Inside the lock, a directory that already holds a previous run (config.yaml, metrics.jsonl,
  checkpoints, a saved model) is refused unless the run resumes or ``train.overwrite_output_dir``
  is set. Overwriting removes the old run's metrics.jsonl, weights and checkpoint-* directories, so
  its records and checkpoints cannot mix with the new run's — only once the new run has checked
  everything and starts writing (``clear_previous_run``): a start that fails keeps the old run whole.
  That pending removal is recorded in the lock itself (``"clear": true``), so the directory, not a
  module global, says what its holder still owes it.
  Beside those well-known artefacts it removes only what the old run's manifest (manifest.py) lists:
  the user's own files (a README.md, notes) stay, whatever they say.
- ``RunLock`` also guards an evaluation's ``--out`` (its ``key`` names the option in messages).

Only the main process (``RANK`` 0 or unset) claims the directory; other ranks write into it under
the main process's lock.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch.distributed as dist

from logitsam.errors import ConfigError
from logitsam.training import manifest
from logitsam.training.checkpoints import WEIGHTS, list_checkpoints

log = logging.getLogger(__name__)
LOCK_NAME = ".logitsam.lock"
KEY = "train.output_dir"
STATE = "run_state.json"  # what of the run is complete (runstate.py)
# What a finished or interrupted run leaves behind (HF Trainer and run.train).
RUN_FILES = ("config.yaml", "metrics.jsonl", "trainer_state.json", "training_args.bin", STATE, *WEIGHTS)


def is_main_process() -> bool:
    """Rank 0 of a distributed run, or a plain process.

    The environment's RANK is trusted only when a launcher set it coherently (integer RANK and
    WORLD_SIZE, WORLD_SIZE > 1, 0 ≤ RANK < WORLD_SIZE) or a process group exists: a stray ``RANK=1``
    in a shell must not switch off the run directory's lock and previous-run checks.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return True  # not a launcher's values
    return rank == 0 if world > 1 and 0 <= rank < world else True


def check_output_dir(path: str, key: str = KEY) -> None:
    """ConfigError (naming ``key``) unless ``path`` is, or can be created as, a writable directory."""
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(f"{key}: must not be empty")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{key}: {path!r} is a file, not a directory")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):  # the nearest existing ancestor decides
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"{key}: {path!r} is under {parent!r}, which is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: {parent!r} is not writable")
    for name in ("config.yaml", "metrics.jsonl"):  # the files a run writes: a folder or pipe in their place
        full = os.path.join(path, name)
        if os.path.lexists(full) and not os.path.isfile(full):
            raise ConfigError(f"{key}: {full!r} is not a regular file (a run writes it); move it away")


def check_not_an_input(path: str, inputs: list[tuple[str, str | None]], key: str = KEY) -> None:
    """ConfigError when the output directory is, or holds, a model the run starts from (``inputs``:
    (config key, path)): the run's saved weights and an overwrite would replace the weights it
    reads, and its config.yaml would name itself as the start."""
    out = os.path.realpath(path)
    for name, source in inputs:
        if not source or not os.path.isdir(source):
            continue  # hub names and built-in models live elsewhere
        src = os.path.realpath(source)
        if src == out or src.startswith(out + os.sep):
            where = "is" if src == out else "holds"
            raise ConfigError(
                f"{key}: {path!r} {where} {name} ({source!r}); training there would write over the weights it "
                "starts from — choose another output_dir"
            )


def previous_run(path: str) -> list[str]:
    """Names in ``path`` that a previous run left (empty when there are none)."""
    found = [n for n in RUN_FILES if os.path.exists(os.path.join(path, n))]
    found += sorted(os.path.basename(p) for p in list_checkpoints(path))
    return found


def _holder(path: str) -> dict[str, Any] | None:
    """The lock's content, or None when it is unreadable (being written, or garbage)."""
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
        return info if isinstance(info, dict) and type(info.get("pid")) is int else None
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OverflowError, ValueError):
        return False
    return True


def _stale(path: str, info: dict[str, Any] | None) -> bool:
    """True when the lock's holder is certainly gone."""
    if info is None:  # unreadable: stale once it is clearly not just being written
        try:
            return time.time() - os.path.getmtime(path) > 30
        except OSError:
            return True
    if info["pid"] <= 0:  # names no process on any host (kill(0/-1) would signal groups): nobody holds it
        return True
    host = info.get("host")  # a lock without a host was not written by logitsam: judged as this host's
    return (not isinstance(host, str) or host == socket.gethostname()) and not _alive(info["pid"])


class RunLock:
    """``<dir>/.logitsam.lock``, created with O_EXCL; see the module docstring."""

    def __init__(self, directory: str, key: str = KEY) -> None:
        self.path, self.key = os.path.join(directory, LOCK_NAME), key
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "id": uuid.uuid4().hex}
        self.held = False

    def acquire(self) -> None:
        if os.path.lexists(self.path) and (os.path.islink(self.path) or not os.path.isfile(self.path)):
            link, folder = os.path.islink(self.path), os.path.isdir(self.path)
            kind = "a symbolic link" if link else "a directory" if folder else "not a regular file"
            raise ConfigError(
                f"{self.key}: the lock path {self.path} is {kind}, not a lock file written by logitsam; remove it "
                "(nothing else uses that name) or use another output_dir"
            )
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = _holder(self.path)
                if not _stale(self.path, info):
                    raise ConfigError(self._busy(info)) from None
                self._take_over(info)
                continue
            except OSError as e:
                raise ConfigError(f"{self.key}: cannot create {self.path}: {e.strerror or e}") from None
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.info, f)
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            return
        raise ConfigError(f"{self.key}: could not take {self.path} (other runs are starting there); try again")

    def _busy(self, info: dict[str, Any] | None) -> str:
        who = "a run whose lock is being written" if info is None else f"pid {info['pid']} on {info.get('host')!r}"
        return (
            f"{self.key}: {os.path.dirname(self.path)!r} is in use by {who} (lock {self.path}); "
            "use another directory, or delete the lock file if no run is using it"
        )

    def _take_over(self, stale: dict[str, Any] | None) -> None:
        """Remove a stale lock; renaming first means two processes cannot both remove a fresh one."""
        moved = f"{self.path}.{self.info['id']}"
        try:
            os.rename(self.path, moved)
        except FileNotFoundError:
            return  # someone else removed it; retry the O_EXCL create
        if _holder(moved) != stale:  # we moved a lock taken in the meantime: put it back
            try:
                os.link(moved, self.path)
            except FileExistsError:
                pass
            finally:
                os.remove(moved)
            raise ConfigError(self._busy(_holder(self.path)))
        os.remove(moved)
        who = "an unreadable lock" if stale is None else f"pid {stale['pid']} (no longer running)"
        log.warning("taking over the stale lock %s left by %s", self.path, who)

    def mark(self, **fields: Any) -> None:
        """Rewrite the held lock with ``fields`` (atomically: a reader sees the old or the new content)."""
        self.info = {**self.info, **fields}
        tmp = f"{self.path}.{self.info['id']}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.info, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def release(self) -> None:
        try:
            if self.held and _ours(_holder(self.path), self.info):  # never remove a lock that is not ours
                os.remove(self.path)
        except OSError as e:  # a read-only remount or a vanished disk: say so, never mask the run's own error
            log.warning("could not remove the run lock %s (%s): delete it by hand", self.path, e.strerror or e)
        self.held = False


def _ours(info: dict[str, Any] | None, mine: dict[str, Any]) -> bool:
    return info is not None and (info.get("pid"), info.get("id")) == (mine["pid"], mine["id"])


@contextmanager
def claim(output_dir: str, *, resuming: bool, overwrite: bool) -> Iterator[None]:
    """Check, create and lock ``output_dir`` for one run (see the module docstring)."""
    check_output_dir(output_dir)
    if not is_main_process():
        yield
        return
    created = not os.path.lexists(output_dir)
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{KEY}: cannot create {output_dir!r}: {e.strerror or e}") from None
    lock = RunLock(output_dir)
    try:
        lock.acquire()
    except ConfigError:
        _remove_if_empty(output_dir, created)
        raise
    try:
        old = previous_run(output_dir)
        if resuming and overwrite:  # a run's own config.yaml may carry overwrite_output_dir: true
            log.warning("train.overwrite_output_dir is ignored: train.resume_from_checkpoint continues the run "
                        "in %s and removes nothing", output_dir)  # fmt: skip
        if old and not resuming:
            if not overwrite and not list_checkpoints(output_dir) and not _finished(output_dir):
                raise ConfigError(
                    f"{KEY}: {output_dir!r} holds a previous run that saved no checkpoint ({', '.join(old[:4])}): "
                    "nothing to resume; start again there with --train.overwrite_output_dir=true, or choose "
                    "another output_dir"
                )
            if not overwrite:
                raise ConfigError(
                    f"{KEY}: {output_dir!r} holds a previous run ({', '.join(old[:4])}"
                    f"{', ...' if len(old) > 4 else ''}); resume it with --train.resume_from_checkpoint=last, "
                    "overwrite it with --train.overwrite_output_dir=true, or choose another output_dir"
                )
            lock.mark(clear=True)  # cleared once the run has checked everything (clear_previous_run)
        yield
    finally:
        lock.release()
        _remove_if_empty(output_dir, created)


def _finished(output_dir: str) -> bool:
    """Whether the run state records a final save (runstate.py; read here: runstate imports this module)."""
    try:
        with open(os.path.join(output_dir, STATE), encoding="utf-8") as f:
            return isinstance(json.load(f).get("final"), dict)
    except (OSError, ValueError, AttributeError):
        return False


def _remove_if_empty(output_dir: str, created: bool) -> None:
    """A start that failed before writing anything leaves no empty output directory behind (only one it made)."""
    try:
        if created and not os.listdir(output_dir):
            os.rmdir(output_dir)
    except OSError:
        pass


# What save_model writes beside the weights: with save_model false a new run would leave them stale.
MODEL_FILES = (
    "config.json", "generation_config.json", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt", "tokenizer.model",
    "added_tokens.json",
)  # fmt: skip
_SHARD = re.compile(r"^(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin)$")


def clear_previous_run(output_dir: str) -> None:
    """Remove the previous run of an ``output_dir`` claimed with ``overwrite_output_dir`` — called when the
    new run has loaded and checked everything and starts changing the directory, so a start that fails
    before (bad data, bad model or settings) leaves the old run whole. A no-op otherwise: outside a claim
    of this process, or once done (the lock's ``clear`` mark is what is pending)."""
    path = os.path.join(output_dir, LOCK_NAME)
    info = _holder(path)
    if info is None or info.get("pid") != os.getpid() or info.get("clear") is not True:
        return
    lock = RunLock(output_dir)
    lock.info, lock.held = info, True
    lock.mark(clear=False)
    _clear(output_dir)


def _clear(output_dir: str) -> None:
    """Remove what would mix with a new run: the old metrics records, trainer files, saved weights and
    checkpoints (config.yaml is rewritten by the new run), and whatever else its manifest lists."""
    removed = manifest.remove_recorded(output_dir)
    for name in (n for n in (*RUN_FILES, *MODEL_FILES) if n != "config.yaml"):
        path = os.path.join(output_dir, name)
        if os.path.isfile(path):
            os.remove(path)
            removed.append(name)
    for name in sorted(os.listdir(output_dir)):  # sharded weights
        if _SHARD.match(name) and os.path.isfile(os.path.join(output_dir, name)):
            os.remove(os.path.join(output_dir, name))
            removed.append(name)
    for ckpt in list_checkpoints(output_dir):  # checkpoint-N folders only: a user's checkpoint-notes.txt stays
        shutil.rmtree(ckpt)
        removed.append(os.path.basename(ckpt))
    if removed:
        log.warning("overwrite_output_dir: removed the previous run's %s from %s", ", ".join(removed), output_dir)
