"""Which files of a directory logitsam wrote: ``<dir>/.logitsam-files.json`` (a run's) or
``<dir>/.logitsam-evaluation.json`` (an evaluation's ``--out``), the manifest.

A run directory (``train.output_dir``) or an evaluation's ``--out`` may hold the user's own files
beside ours (notes, a README.md, the prompt file). What we wrote is known by this record, never by
a word in a file's text: an overwrite removes only what the manifest lists (and the well-known
artefacts its caller names), and a file we did not write is never replaced or deleted.

Entries are paths relative to the directory: ``files`` (removed), ``trees`` (folders wholly ours,
removed with their content) and ``folders`` (folders we created that may also hold the user's
files: removed only once empty). A name is recorded before the file is written, so an interrupted
write still leaves it known as ours. A run and an evaluation keep separate manifests, so an
evaluation's ``--overwrite`` into a run directory can never remove the run's files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

log = logging.getLogger(__name__)
MANIFEST = ".logitsam-files.json"
EVALUATION = ".logitsam-evaluation.json"
KINDS = ("files", "trees", "folders")


@dataclass
class Manifest:
    files: set[str] = field(default_factory=set)
    trees: set[str] = field(default_factory=set)
    folders: set[str] = field(default_factory=set)

    def __contains__(self, name: str) -> bool:
        name = os.path.normpath(name)
        return name in self.files or name in self.trees

    def entries(self) -> set[str]:
        return self.files | self.trees | self.folders


def _safe(name: object) -> str | None:
    """``name`` normalised when it is a relative path inside the directory (a manifest edited by hand or
    damaged must never make us delete outside it), else None."""
    if not isinstance(name, str) or not name or os.path.isabs(name):
        return None
    norm = os.path.normpath(name)
    if norm == "." or norm.split(os.sep)[0] == ".." or norm.startswith(".logitsam"):  # never our bookkeeping
        return None
    return norm


def read(directory: str, name: str = MANIFEST) -> Manifest:
    """The directory's manifest; empty when there is none (nothing there is known as ours) or it is unreadable."""
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        return Manifest()
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        log.warning("%s is unreadable (%s): no file there is taken as logitsam's", path, e)
        return Manifest()
    data = data if isinstance(data, dict) else {}
    lists = {k: data.get(k) if isinstance(data.get(k), list) else [] for k in KINDS}
    return Manifest(**{k: {n for n in map(_safe, v) if n is not None} for k, v in lists.items()})


def _write(directory: str, m: Manifest, name: str) -> None:
    path = os.path.join(directory, name)
    if not m.entries():
        if os.path.isfile(path):
            os.remove(path)
        return
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump({k: sorted(getattr(m, k)) for k in KINDS}, f, indent=1)
    os.replace(path + ".tmp", path)


def record(
    directory: str,
    *,
    files: Iterable[str] = (),
    trees: Iterable[str] = (),
    folders: Iterable[str] = (),
    name: str = MANIFEST,
) -> None:
    """Add entries (paths relative to ``directory``) to its manifest ``name``."""
    m = read(directory, name)
    for kind, names in (("files", files), ("trees", trees), ("folders", folders)):
        getattr(m, kind).update(n for n in map(_safe, names) if n is not None)
    _write(directory, m, name)


def owns(directory: str, path: str, name: str = MANIFEST) -> bool:
    """Whether ``path`` (relative to ``directory``) is a file or folder the manifest lists as ours."""
    return path in read(directory, name)


def existing(directory: str, name: str = MANIFEST) -> list[str]:
    """The manifest's files and trees that exist now (what a previous writer left), sorted."""
    m = read(directory, name)
    return sorted(n for n in m.files | m.trees if os.path.lexists(os.path.join(directory, n)))


def remove_recorded(directory: str, name: str = MANIFEST) -> list[str]:
    """Remove what the manifest lists (links as links, never their targets; folders only once empty),
    then forget it; returns the removed entries."""
    m, removed = read(directory, name), []
    for entry in sorted(m.files | m.trees):
        path = os.path.join(directory, entry)
        if os.path.islink(path) or os.path.isfile(path):
            os.remove(path)
        elif os.path.isdir(path) and entry in m.trees:
            shutil.rmtree(path)
        else:
            continue
        removed.append(entry)
    for entry in sorted(m.folders, key=len, reverse=True):  # deepest first
        path = os.path.join(directory, entry)
        if os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path):
            os.rmdir(path)
    _write(directory, Manifest(), name)
    return removed


def _snapshot(directory: str) -> dict[str, tuple[bool, int, int]]:
    out = {}
    for entry in os.scandir(directory):
        st = entry.stat(follow_symlinks=False)
        out[entry.name] = (entry.is_dir(follow_symlinks=False), st.st_mtime_ns, st.st_size)
    return out


@contextmanager
def recording(directory: str, active: bool = True) -> Iterator[None]:
    """Record what appears or changes in ``directory`` (its top level) while the block runs, e.g. every
    file a library's save writes, whatever their names (PEFT's README.md included)."""
    if not active:
        yield
        return
    before = _snapshot(directory)
    try:
        yield
    finally:
        after = _snapshot(directory)
        changed = [n for n, s in after.items() if before.get(n) != s and _safe(n) is not None]
        record(directory, files=[n for n in changed if not after[n][0]], trees=[n for n in changed if after[n][0]])
