"""logits-SAM's perturbation inside the fused head (docs/design.md §5): ε's ingredient, its norm,
and its products with hidden rows and with dz, all in the compute dtype.

Every method that holds its own ingredient implements :class:`Perturbation`:
- :class:`WeightEps` holds g = Σ_c G_cᵀ H_c (V, d) (optionally |W|⊙g, the adaptive form);
- :class:`GramEps` holds the rows G_r (N_r, V) and never forms ε (products through H H_rᵀ);
- ``chunked`` holds g in the head gradient's own buffer (fused/vocab.py; :func:`adapt_`,
  :func:`norm_sq_blocks` serve it and ``weight``).
Both add scale·(H εᵀ) to float32 logits as a separate product, so bf16 never rounds ε away.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from logitsam.fused.products import Scaled, rows_at_vocab
from logitsam.sam import common


def held_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype for ε's ingredients: the compute dtype, except fp16 whose range underflows them."""
    return torch.float32 if dtype == torch.float16 else dtype


def adapt_(g: Tensor, weight: Tensor) -> None:
    """g ← |W|⊙g in place (the paper's code's ``sam_adaptive``), in row blocks (no V×d temporary)."""
    step = max(1, common.BLOCK_ENTRIES // max(1, g.shape[1]))
    for a in range(0, g.shape[0], step):
        g[a : a + step].mul_(weight[a : a + step].detach().abs().to(g.dtype))


def norm_sq_blocks(g: Tensor, acc: torch.dtype) -> Tensor:
    """‖g‖²_F of a (V, d) tensor in ``acc``, in row blocks (a reduction: no V×d temporary in ``acc``)."""
    step = max(1, common.BLOCK_ENTRIES // max(1, g.shape[1]))
    total = torch.zeros((), dtype=acc, device=g.device)
    for a in range(0, g.shape[0], step):
        total += torch.linalg.vector_norm(g[a : a + step].to(acc)).square()
    return total


class Perturbation(Protocol):
    """ε = scale·(ingredient), built from the clean sweep's dz and applied in the perturbed sweep.

    Made as ``cls(h, v, dtype)`` with h (N_r, d) the scored rows, V the vocabulary, dtype the compute
    dtype; the fused head sets ``scale`` (ρ/‖g‖, a 0-d tensor) between the two sweeps.
    """

    scale: Tensor | None

    def accumulate(self, s: int, e: int, dz: Tensor | Scaled) -> None:
        """Take in dz (e − s, V) of rows [s, e) from the clean sweep (``dz.to(dtype)`` reads it)."""

    def norm_sq(self, acc: torch.dtype) -> Tensor:
        """‖g‖²_F (0-d, in ``acc``) of the unscaled direction g (V, d)."""

    def add_shift(self, z: Tensor, s: int, e: int, h: Tensor) -> Tensor:
        """z (e − s, V) float logits of rows [s, e) of h (N_r, d) plus scale·h[s:e] gᵀ."""

    def shift_back(self, dz: Tensor, acc: torch.dtype) -> Tensor:
        """scale·dz g: (rows, d) in ``acc``, ε's share of dH."""


class _HasScale:
    """The scale ρ/‖g‖ the head sets between the sweeps."""

    scale: Tensor | None = None

    def _scale(self) -> Tensor:
        assert self.scale is not None, "the head sets scale after the clean sweep"
        return self.scale


class WeightEps(_HasScale):
    """ε = scale·g with g = Σ_c G_cᵀ H_c (V, d) held in the compute dtype (bf16 on a GPU)."""

    def __init__(self, h: Tensor, v: int, dtype: torch.dtype) -> None:
        self.h = h.detach()
        self.g = torch.zeros(v, h.shape[1], dtype=held_dtype(dtype), device=h.device)
        self.scale: Tensor | None = None

    def accumulate(self, s: int, e: int, dz: Tensor | Scaled) -> None:
        self.g.addmm_(dz.to(self.g.dtype).T, self.h[s:e].to(self.g.dtype))

    def norm_sq(self, acc: torch.dtype) -> Tensor:
        return norm_sq_blocks(self.g, acc)

    def add_shift(self, z: Tensor, s: int, e: int, h: Tensor) -> Tensor:
        """z += scale·H_c gᵀ: in place when dtypes agree, else through one held-dtype product."""
        hc = h[s:e].to(self.g.dtype)
        if z.dtype == self.g.dtype:
            return z.addmm_(hc * self._scale(), self.g.T)
        return z.addcmul_(F.linear(hc, self.g), self._scale())

    def shift_back(self, dz: Tensor, acc: torch.dtype) -> Tensor:
        return rows_at_vocab(dz.to(self.g.dtype), self.g, acc).mul_(self._scale())


class GramEps(_HasScale):
    """ε = scale·G_rᵀ H_r never formed: the rows G_r (N_r, V) are kept, products go through H H_rᵀ."""

    def __init__(self, h: Tensor, v: int, dtype: torch.dtype) -> None:
        self.h_r = h.detach().to(held_dtype(dtype))
        self.g_r = torch.zeros(h.shape[0], v, dtype=self.h_r.dtype, device=h.device)
        self.scale: Tensor | None = None

    def accumulate(self, s: int, e: int, dz: Tensor | Scaled) -> None:
        self.g_r[s:e] = dz.to(self.g_r.dtype)

    def norm_sq(self, acc: torch.dtype) -> Tensor:
        # ‖G_rᵀ H_r‖² = Σ (H_r H_rᵀ) ⊙ (G_r G_rᵀ), in row blocks so no N_r × N_r matrix is whole.
        step = max(1, common.GRAM_BLOCK_ENTRIES // max(1, self.h_r.shape[0]))
        total = torch.zeros((), dtype=acc, device=self.h_r.device)
        for a in range(0, self.h_r.shape[0], step):
            kh = (self.h_r[a : a + step] @ self.h_r.T).to(acc)
            total += (kh * (self.g_r[a : a + step] @ self.g_r.T).to(acc)).sum()
        return total

    def add_shift(self, z: Tensor, s: int, e: int, h: Tensor) -> Tensor:
        """z += scale·(H_c H_rᵀ) G_r."""
        k = h[s:e].to(self.h_r.dtype) @ self.h_r.T
        if z.dtype == self.g_r.dtype:
            return z.addmm_(k.mul_(self._scale()), self.g_r)
        return z.addcmul_(k @ self.g_r, self._scale())

    def shift_back(self, dz: Tensor, acc: torch.dtype) -> Tensor:
        return ((dz.to(self.g_r.dtype) @ self.g_r.T) @ self.h_r).to(acc).mul_(self._scale())
