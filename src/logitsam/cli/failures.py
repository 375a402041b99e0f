"""How an exception that is not a bug becomes one line for the user (the disk, a diverged run)."""

from __future__ import annotations

import errno
import sys

from logitsam.errors import one_line


def storage_error(e: BaseException) -> str | None:
    """One line for a full disk, a quota, a read-only file system or a permission refused while writing
    (also when a library wrapped the OSError, e.g. safetensors' SafetensorError); None for anything else."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            where = f" writing {seen.filename!r}" if seen.filename else ""
            return (
                f"the disk refused a write{where}: {seen.strerror}. Checkpoints completed before it are kept (a "
                "partial one is skipped on resume); free space or remount, then resume with "
                "--train.resume_from_checkpoint=last"
            )
        if isinstance(seen, PermissionError) and seen.filename:  # e.g. a report into a read-only directory
            return f"cannot write {seen.filename!r}: {seen.strerror}; make it writable or choose another --out"
        if isinstance(seen, IsADirectoryError) and seen.filename:  # e.g. a folder named report.md
            target = getattr(seen, "filename2", None) or seen.filename
            return f"cannot write {target!r}: a directory is in its place; move it away or choose another --out"
        seen = seen.__cause__ or seen.__context__
    text = str(e).lower()
    if type(e).__name__ == "SafetensorError" and ("no space" in text or "read-only" in text):
        return f"the disk refused a write: {one_line(e, 200)}; free space or remount, then resume"
    return None


def is_training_diverged(e: BaseException) -> bool:
    """Whether ``e`` is trainer.TrainingDiverged; the trainer module (torch, transformers) is only
    looked up when it is already loaded, which it is whenever it raised."""
    trainer = sys.modules.get("logitsam.training.trainer")
    diverged = getattr(trainer, "TrainingDiverged", None)
    return isinstance(diverged, type) and isinstance(e, diverged)
