"""The fused head's logits-SAM methods, one row each: how ε's ingredient is held and what it costs.

A new method is one class implementing :class:`~logitsam.fused.perturbations.Perturbation` and one
row in :data:`FUSED_METHODS`; the head (fused/head.py) reads only this table. Costs are the extra work
over a plain fused step for N_r scored rows, width d, vocabulary V and ``elem_bytes`` per held entry
(docs/design.md §5); ``auto`` picks the fewest flops within a memory budget (sam/costs.py:cheapest).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from logitsam.fused.perturbations import GramEps, Perturbation, WeightEps
from logitsam.sam import common
from logitsam.sam.costs import Cost, cheapest

CostFn = Callable[[int, int, int, int], Cost]  # (N_r, d, V, elem_bytes) -> extra flops and bytes


@dataclass(frozen=True)
class FusedMethod:
    """One method: ``make(h, V, dtype)`` builds its perturbation, or None for ``chunked`` (g kept in the
    head gradient's own buffer, the vocabulary-order sweep of fused/vocab.py); ``cost`` its formula;
    ``adaptive`` whether it can scale ε by |W| elementwise (it holds g as a (V, d) tensor)."""

    make: Callable[[Tensor, int, torch.dtype], Perturbation] | None
    cost: CostFn
    adaptive: bool


def _weight_cost(n_r: int, d: int, v: int, elem_bytes: int) -> Cost:
    # g, recomputed z, H εᵀ and dz'ε: four products of 2·N_r·V·d; ε held.
    return Cost(8.0 * n_r * v * d, float(v * d * elem_bytes))


def _chunked_cost(n_r: int, d: int, v: int, elem_bytes: int) -> Cost:
    # weight's four plus pass A's z and H εᵀ; g lives in dW's buffer, one vocabulary block of it held.
    return Cost(12.0 * n_r * v * d, float(min(v * d, common.BLOCK_ENTRIES) * elem_bytes))


def _gram_cost(n_r: int, d: int, v: int, elem_bytes: int) -> Cost:
    # recomputed z plus six N_r²(d + V) products (norm, shift, its backward); G_r and H_r held.
    return Cost(2.0 * n_r * v * d + 6.0 * n_r * n_r * (d + v), float(n_r * (v + d) * elem_bytes))


FUSED_METHODS: dict[str, FusedMethod] = {
    "weight": FusedMethod(WeightEps, _weight_cost, adaptive=True),
    "chunked": FusedMethod(None, _chunked_cost, adaptive=True),
    "gram": FusedMethod(GramEps, _gram_cost, adaptive=False),
}
FALLBACK = "chunked"  # the least memory: one vocabulary block


def fused_method_costs(n_r: int, d: int, v: int, elem_bytes: int) -> dict[str, Cost]:
    """Each method's extra cost over a plain fused step (the table's formulas)."""
    return {name: m.cost(n_r, d, v, elem_bytes) for name, m in FUSED_METHODS.items()}


def choose_fused_method(
    n_r: int, d: int, v: int, elem_bytes: int, max_extra_bytes: float | None = None, *, adaptive: bool = False
) -> str:
    """Fewer tensor-core flops wins among the methods whose extra bytes fit ``max_extra_bytes``
    (``adaptive``: only those that hold g elementwise); ``chunked`` when none fits."""
    costs = {n: m.cost(n_r, d, v, elem_bytes) for n, m in FUSED_METHODS.items() if m.adaptive or not adaptive}
    return cheapest(costs, max_extra_bytes, FALLBACK)


def check_fused_method(method: str, adaptive: bool) -> str:
    """``method`` if the fused head runs it (a table row or ``auto``), else a ValueError naming the choices;
    the adaptive form only where the row holds g elementwise."""
    common.check_method(method, (*FUSED_METHODS, "auto"))
    common.check_adaptive(method, adaptive)
    if method != "auto" and adaptive and not FUSED_METHODS[method].adaptive:
        raise ValueError(f"adaptive logits-SAM needs W elementwise (ε ∝ |W|⊙g), which {method} never forms")
    return method
