"""The checkpoint commit protocol's writing side: a checkpoint counts only once a marker says it is complete.

HF ``Trainer._save_checkpoint`` writes ``checkpoint-N`` in place, so a process killed mid-save leaves a
partial directory with the newest step number. Renaming a finished temporary directory would need an
override of ``_save_checkpoint`` (a Trainer subclass); a callback cannot redirect the write. So
completion is recorded instead (checkpoints.py reads and verifies it):

- :class:`AtomicCheckpoints` (a ``TrainerCallback``): before a save it puts a ``.logitsam-saving-*``
  sentinel in the directory about to be (re)written and removes its completion marker (a rewrite
  killed half-way mixes old and new files: never complete); in ``on_save``, which HF calls only after
  ``_save_checkpoint`` returned, it fsyncs the files and writes ``.logitsam-complete-<rank>-of-<world>``
  (atomically: temporary file + rename), then removes the sentinel; the marker holds the step, every
  file's size and the SHA-256 of its whole content (:func:`file_sha256`, streamed). Markers written
  before held a sampled digest (16 evenly spaced 64 KiB blocks, :func:`sampled_digest`), which missed a
  flipped byte between the blocks: a corrupted weight resumed silently; they are still read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

MARKER = ".logitsam-complete"
SAVING = ".logitsam-saving"  # left in a checkpoint folder while a save into it runs


def sampled_digest(path: str, blocks: int = 16, block: int = 1 << 16) -> str:
    """SHA-256 of the size and ``blocks`` evenly spaced ``block``-byte pieces of a file (all of a small one)."""
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= blocks * block:
            h.update(f.read())
        else:
            for i in range(blocks):
                f.seek((size - block) * i // (blocks - 1))
                h.update(f.read(block))
    return h.hexdigest()


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's whole content, read in ``chunk``-byte pieces (memory stays flat for any size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(chunk):
            h.update(piece)
    return h.hexdigest()


def digest_or_none(path: str, digest: Callable[[str], str] = sampled_digest) -> str | None:
    """``digest(path)``, or None when the file cannot be read (gone, a directory, no permission)."""
    try:
        return digest(path)
    except OSError:
        return None


def share_as_umask(paths: list[str]) -> None:
    """Give files the mode the umask allows (0666 & ~umask), as a plain ``open`` would: the pinned safetensors
    writes weights 0600, so teammates on a shared disk could not read a run's model or checkpoints."""
    mask = os.umask(0)
    os.umask(mask)
    mode = 0o666 & ~mask
    for path in paths:
        try:
            st = os.lstat(path)
            if os.path.isfile(path) and not os.path.islink(path) and st.st_mode & 0o777 != mode | (st.st_mode & 0o111):
                os.chmod(path, mode | (st.st_mode & 0o111 & ~mask))
        except OSError:  # a file of another user, a vanished file: left as it is
            pass


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


class AtomicCheckpoints(TrainerCallback):
    """Marks a ``checkpoint-N`` complete after HF finished writing it (see the module docstring)."""

    def _marker(self, args: Any, state: Any) -> str:
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        return os.path.join(folder, f"{MARKER}-{args.process_index}-of-{args.world_size}")

    def _unmark(self, args: Any, state: Any, control: Any) -> None:
        """Before a save: the folder gets this rank's SAVING sentinel, then loses its marker, so a save
        killed half-way (a rewrite mixing old and new files included) never counts as complete."""
        if control.should_save:
            marker = self._marker(args, state)
            os.makedirs(os.path.dirname(marker), exist_ok=True)
            with open(self._sentinel(marker), "w", encoding="utf-8"):
                pass
            if os.path.exists(marker):
                os.remove(marker)

    @staticmethod
    def _sentinel(marker: str) -> str:
        return os.path.join(os.path.dirname(marker), SAVING + os.path.basename(marker)[len(MARKER) :])

    def on_step_end(self, args, state, control, **kwargs):
        self._unmark(args, state, control)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._unmark(args, state, control)

    def on_save(self, args, state, control, **kwargs):
        marker = self._marker(args, state)
        folder = os.path.dirname(marker)
        if not os.path.isdir(folder):
            return
        # rank 0 vouches for everything but the other ranks' RNG files; each rank for its own RNG file
        own_rng, rng = f"rng_state_{args.process_index}.pth", re.compile(r"rng_state_\d+\.pth")
        sizes, digests = {}, {}
        for root, _, names in os.walk(folder):
            for name in names:
                full = os.path.join(root, name)
                rel = os.path.relpath(full, folder)
                if name.startswith((MARKER, SAVING)):
                    continue
                if rel == own_rng or (args.process_index == 0 and not rng.fullmatch(rel)):
                    share_as_umask([full])
                    _fsync(full)
                    sizes[rel] = os.path.getsize(full)
                    digests[rel] = file_sha256(full)
        record = {"step": state.global_step, "files": sizes, "sha256": digests}
        config = os.path.join(args.output_dir, "config.yaml")
        if os.path.isfile(config):  # the settings this state was trained with (a resume compares against them)
            record["config_digest"] = sampled_digest(config)
        tmp = marker + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, marker)
        sentinel = self._sentinel(marker)
        if os.path.exists(sentinel):
            os.remove(sentinel)
        _fsync(folder)
