"""The cost model of logits-SAM's methods: extra flops and bytes over a plain step, and one chooser.

Two engines do different work, so each has its own formulas:
- ``logits``: logits-SAM on given logits (sam/logits.py) — the clean logits already exist; here;
- ``fused``: inside the fused head (docs/design.md §5) — nothing of size N×V is kept, so the perturbed
  pass recomputes the clean logits; each method's formula sits in its row of ``fused/methods.py``.
The cheapest method in flops whose extra memory fits the budget wins (None: no limit).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cost:
    """Extra work over a plain head forward/backward: flops and bytes held."""

    flops: float
    extra_bytes: float


def method_costs(n: int, n_r: int, d: int, v: int, elem_bytes: int = 4) -> dict[str, Cost]:
    """Logits engine: N tokens, N_r scored, width d, vocabulary V."""
    norm = 2.0 * n_r * n_r * (v + d) if n_r <= d else 2.0 * n_r * v * d
    return {
        # g = G_rᵀ H_r, then a second head forward with W + ε; ε and W + ε held.
        "weight": Cost(2.0 * n_r * v * d + 2.0 * n * v * d, v * d * (4 + elem_bytes)),
        # K = H H_rᵀ, K G_r forward; dK = dz' G_rᵀ, dH = dK H_r backward; G_r and K held.
        "gram": Cost(norm + 4.0 * n * n_r * (v + d), 4.0 * (n_r * v + n * n_r)),
        # ε blocks built twice (forward, backward) and applied in both directions.
        "chunked": Cost(norm + 4.0 * (n + n_r) * v * d, 4.0 * n_r * v),
    }


def cheapest(costs: dict[str, Cost], max_extra_bytes: float | None, fallback: str) -> str:
    """The method of fewest flops whose extra bytes fit ``max_extra_bytes``; ``fallback`` if none fits."""
    fits = [m for m, c in costs.items() if max_extra_bytes is None or c.extra_bytes <= max_extra_bytes]
    return min(fits, key=lambda m: costs[m].flops) if fits else fallback
