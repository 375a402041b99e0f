"""Hessian traces (paper §4.3): Hutchinson estimates with Hessian-vector products, and the exact
logit-Hessian trace.

tr(H) = E[vᵀHv] for Rademacher probes v; each probe costs one double-backward. Reported with the
standard error of the mean over probes. Used for the parameter Hessian of the preference loss. Its
logit Hessian (the Hessian in the logits z, the quantity the paper's theory is about) has a closed-form
trace (:func:`exact_logit_hessian_trace`): no probes, no sampling error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm


@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson estimate: mean of vᵀHv over ``probes`` probes and its standard error."""

    mean: float
    stderr: float
    probes: int

    def to_dict(self) -> dict:
        return {"trace": self.mean, "stderr": self.stderr, "probes": self.probes}


def _rademacher(like: Tensor, gen: torch.Generator) -> Tensor:
    r = torch.randint(0, 2, like.shape, generator=gen, dtype=torch.int8)
    return (2 * r - 1).to(device=like.device, dtype=like.dtype)


def _estimate(samples: list[float]) -> TraceEstimate:
    n = len(samples)
    mean = sum(samples) / n
    var = sum((s - mean) ** 2 for s in samples) / (n - 1) if n > 1 else float("nan")
    return TraceEstimate(mean, math.sqrt(var / n) if n > 1 else float("nan"), n)


def hutchinson(
    grads: Sequence[Tensor],
    inputs: Sequence[Tensor],
    *,
    probes: int = 16,
    seed: int = 0,
    target_rel_se: float | None = None,
    min_probes: int = 8,
    desc: str = "Hutchinson probes",
) -> TraceEstimate:
    """tr(∂²L/∂inputs²) from first derivatives ``grads`` built with ``create_graph=True``.

    ``target_rel_se``: stop as soon as the standard error is at most this fraction of |trace| (after
    ``min_probes``); ``probes`` is then the cap. A progress bar (with its time estimate) shows the probes.
    """
    if probes < 1:
        raise ValueError("probes must be >= 1")
    if target_rel_se is not None and not (math.isfinite(target_rel_se) and target_rel_se > 0):
        raise ValueError(f"target_rel_se must be a positive fraction, got {target_rel_se!r}")
    gen = torch.Generator().manual_seed(seed)
    samples: list[float] = []
    bar = tqdm(total=probes, desc=desc, leave=False)
    for i in range(probes):
        vs = [_rademacher(x, gen) for x in inputs]
        hv = torch.autograd.grad(grads, inputs, grad_outputs=vs, retain_graph=i < probes - 1, allow_unused=True)
        samples.append(sum(float((v * h).sum()) for v, h in zip(vs, hv, strict=True) if h is not None))
        bar.update(1)
        if target_rel_se is not None and len(samples) >= max(2, min_probes):
            est = _estimate(samples)
            if est.stderr <= target_rel_se * abs(est.mean):
                break
    bar.close()
    return _estimate(samples)


def parameter_hessian_trace(
    loss_closure: Callable[[], Tensor], params: Sequence[Tensor], *, probes: int = 16, seed: int = 0, **kw: Any
) -> TraceEstimate:
    """Trace of the Hessian of ``loss_closure()`` in ``params`` (all trainable parameters); ``kw``: see hutchinson."""
    params = [p for p in params if p.requires_grad]
    loss = loss_closure()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    return hutchinson(grads, params, probes=probes, seed=seed, desc="parameter-Hessian probes", **kw)


def logit_hessian_trace(
    loss_fn: Callable[[Tensor], Tensor], logits: Tensor, *, probes: int = 16, seed: int = 0, **kw: Any
) -> TraceEstimate:
    """Trace of the Hessian of ``loss_fn`` in the logits (..., V), the body held fixed; ``kw``: see hutchinson."""
    z = logits.detach().requires_grad_()
    (grad,) = torch.autograd.grad(loss_fn(z), z, create_graph=True)
    return hutchinson([grad], [z], probes=probes, seed=seed, desc="logit-Hessian probes", **kw)


def exact_logit_hessian_trace(
    loss_of_token_logps: Callable[[Tensor], Tensor], logits: Tensor, labels: Tensor, ignore_index: int = -100
) -> TraceEstimate:
    """Exact tr(∂²L/∂z²) in the logits z (N, T, V) of a loss that sees z only through the label log-probs
    ℓ (N, T), ℓ[n, t] = log softmax(z[n, t])[labels[n, t]] (0 where labels == ``ignore_index``).

    Each ℓ[n, t] depends on its own row z[n, t] only, so the cross terms of the chain rule vanish:
    tr = Σ_a ∂²L/∂ℓ_a² · ‖∇_z ℓ_a‖² + Σ_a ∂L/∂ℓ_a · tr ∇²_z ℓ_a, with ‖∇_z ℓ‖² = 1 − 2p_y + Σ_i p_i² and
    tr ∇²_z ℓ = −(1 − Σ_i p_i²). The diagonal of ∂²L/∂ℓ² takes one Hessian-vector product per scored
    token, on the loss's tiny graph over ℓ (never through the vocabulary). In float64; returned as a
    :class:`TraceEstimate` with standard error 0 and 0 probes.
    """
    z = logits.detach().to(torch.float64)
    mask = labels != ignore_index
    lp = torch.log_softmax(z, dim=-1)
    p2 = lp.exp().square().sum(-1)  # Σ_i p_i²
    py = lp.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    ell = torch.where(mask, py, 0.0).requires_grad_()
    (g,) = torch.autograd.grad(loss_of_token_logps(ell), ell, create_graph=True)
    idx = mask.nonzero().tolist()
    diag = torch.zeros_like(ell)
    if g.requires_grad:  # else the loss is linear in ℓ: its Hessian in ℓ is 0
        for k, pos in enumerate(tqdm(idx, desc="exact logit-Hessian trace", leave=False)):
            e = torch.zeros_like(ell)
            e[tuple(pos)] = 1.0
            (h,) = torch.autograd.grad(g, ell, grad_outputs=e, retain_graph=k < len(idx) - 1, allow_unused=True)
            if h is not None:
                diag[tuple(pos)] = h[tuple(pos)]
    grad_sq = torch.where(mask, 1 - 2 * py.exp() + p2, 0.0)
    lap = torch.where(mask, -(1 - p2), 0.0)
    trace = (diag * grad_sq).sum() + (g.detach() * lap).sum()
    return TraceEstimate(float(trace), 0.0, 0)
