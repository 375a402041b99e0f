"""(rows, V) @ (V, d) products of the fused head (dH = dz·W, dz'·ε), fast on every device.

On a GPU one product. On a CPU in bf16/fp16, oneDNN's kernels are fast only when the right operand
is in linear-weight layout (d, V) contiguous: ``dz @ W`` with W (V, d) row-major ran 40× slower than
``F.linear(dz, Wᵀ.contiguous())`` (84 s vs 2 s for 130 × 128,256 × 256 on 2 EPYC cores without
native bf16), so there the product runs in vocabulary blocks, each block of W transposed once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from logitsam.sam import common


def rows_at_vocab(dz: Tensor, m: Tensor, out_dtype: torch.dtype) -> Tensor:
    """dz (N, V) @ m (V, d) -> (N, d) in ``out_dtype`` (products in dz's dtype, float32 sums on a CPU)."""
    if dz.device.type != "cpu" or dz.dtype not in (torch.bfloat16, torch.float16):
        return (dz @ m).to(out_dtype)
    step = max(1, common.BLOCK_ENTRIES // max(1, m.shape[1]))  # one transposed block of m
    out = torch.zeros(dz.shape[0], m.shape[1], dtype=torch.float32, device=dz.device)
    for a in range(0, m.shape[0], step):
        out += F.linear(dz[:, a : a + step], m[a : a + step].t().contiguous())
    return out.to(out_dtype)


class Scaled:
    """dz held as (dz·k) in fp16 with the float32 scale k (fp16 underflows small gradients);
    ``.to(dtype)`` undoes k, ``.raw`` keeps it."""

    def __init__(self, raw: Tensor, k: Tensor) -> None:
        self.raw, self.k = raw, k

    def to(self, dtype: torch.dtype) -> Tensor:
        return self.raw.to(torch.float32).div_(self.k).to(dtype)
