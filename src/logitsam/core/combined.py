"""Weighted sums of registered losses as one loss (TRL's ``loss_type`` list with ``loss_weights``; MPO), and
what extra inputs a loss asks for by its hyperparameters.

A weighted sum is a :class:`~logitsam.core.registry.LossSpec` like any other: its per-pair losses are
Σ_k w_k·loss_k, so its batch mean is TRL's Σ_k w_k·mean(loss_k), logits-SAM perturbs for the sum (one ε
from the sum's gradient), and the fused head is exact for it (whole-batch dL/dsums when a term couples the
pairs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from logitsam.core.losses import LossOutput, PreferenceLogps
from logitsam.core.registry import LossSpec, get_loss, resolve_hparams


def extra_inputs(spec: LossSpec, params: Mapping[str, Any]) -> frozenset[str]:
    """What a loss needs besides the summed log-probs and lengths, by its hyperparameters: ``"shared"``
    (LD-DPO's shared-prefix sums, ``ld_alpha`` ≠ 1) and ``"wpo"`` (WPO's log-weights, ``use_weighting``);
    a weighted sum needs what its terms need."""
    if spec.parts:
        return frozenset().union(*(extra_inputs(s, p) for s, _, p in spec.parts))
    need = {"shared"} if params.get("ld_alpha", 1.0) != 1.0 else set()
    return frozenset(need | ({"wpo"} if params.get("use_weighting") is True else set()))


def combine_losses(terms: Sequence[tuple[str, float, Mapping[str, Any]]]) -> LossSpec:
    """One loss from ``terms`` = [(registered name, weight w_k ≥ 0, its hyperparameters), ...]:
    per-pair losses Σ_k w_k·loss_k (B,), rewards those of the first term. Hyperparameters are checked
    against each term's ranges; the sum has none of its own (``defaults`` empty). E.g. MPO:
    ``[("dpo", 0.8, {}), ("bco_pair", 0.2, {}), ("sft", 1.0, {})]``.
    """
    if not terms:
        raise ValueError("a weighted loss needs at least one term")
    parts = []
    for name, weight, params in terms:
        spec = get_loss(name)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"loss {name!r}: weight {weight!r} must be a finite number ≥ 0 (< 0 maximises the term)")
        parts.append((spec, float(weight), resolve_hparams(spec, params)))

    def weighted(inp: PreferenceLogps) -> LossOutput:
        outs = [(w, s.fn(inp, **p)) for s, w, p in parts]
        losses = torch.stack([w * o.losses for w, o in outs]).sum(0)
        return LossOutput(losses, outs[0][1].chosen_rewards, outs[0][1].rejected_rewards)

    uses = tuple(side for side in ("chosen", "rejected") if any(side in s.uses for s, _, _ in parts))
    return LossSpec(
        name="+".join(f"{w:g}*{s.name}" for s, w, _ in parts),
        fn=weighted,
        needs_reference=any(s.needs_reference for s, _, _ in parts),
        length_normalized=parts[0][0].length_normalized,
        summary="weighted sum: " + ", ".join(f"{w:g} × {s.name}" for s, w, _ in parts),
        batch_coupled=any(s.batch_coupled for s, _, _ in parts),
        uses=uses,
        parts=tuple(parts),
    )
