"""Peak tensor memory of a piece of code on any device, CPU included.

A TorchDispatchMode sees every tensor an ATen op creates; each new storage is counted until the
last tensor using it dies (PyTorch keeps a tensor's Python object alive while its C++ tensor
lives, so a weakref finalizer fires when the storage is really released). This is what
``torch.cuda.max_memory_allocated`` reports on GPUs, without allocator caching or rounding.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class PeakMemory(TorchDispatchMode):
    """Use as ``with PeakMemory() as pm: ...``; then ``pm.peak`` (bytes) and ``pm.live``."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, list[int]] = {}  # storage ptr -> [bytes, tensors alive]

    def _release(self, ptr: int) -> None:
        entry = self._refs.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self._refs[ptr]

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        ptr, nbytes = storage.data_ptr(), storage.nbytes()
        if nbytes == 0:
            return
        if ptr in self._refs:
            self._refs[ptr][1] += 1
        else:
            self._refs[ptr] = [nbytes, 1]
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        weakref.finalize(t, self._release, ptr)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            a.untyped_storage().data_ptr()
            for a in torch.utils._pytree.tree_leaves((args, kwargs))
            if isinstance(a, torch.Tensor)
        }
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                ptr = t.untyped_storage().data_ptr()
                if ptr in inputs and ptr not in self._refs:
                    continue  # a view of a tensor made outside the block: not an allocation here
                self._track(t)
        return out
