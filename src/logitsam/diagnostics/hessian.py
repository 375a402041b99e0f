"""Hessian traces (paper §4.3): Hutchinson estimates with Hessian-vector products.

tr(H) = E[vᵀHv] for Rademacher probes v; each probe costs one double-backward. Reported with the
standard error of the mean over probes. Used for the parameter Hessian of the preference loss and
for its logit Hessian (the Hessian in the logits z, the quantity the paper's theory is about).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


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


def hutchinson(grads: Sequence[Tensor], inputs: Sequence[Tensor], *, probes: int = 16, seed: int = 0) -> TraceEstimate:
    """tr(∂²L/∂inputs²) from first derivatives ``grads`` built with ``create_graph=True``."""
    if probes < 1:
        raise ValueError("probes must be >= 1")
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(probes):
        vs = [_rademacher(x, gen) for x in inputs]
        hv = torch.autograd.grad(grads, inputs, grad_outputs=vs, retain_graph=i < probes - 1, allow_unused=True)
        samples.append(sum(float((v * h).sum()) for v, h in zip(vs, hv, strict=True) if h is not None))
    mean = sum(samples) / probes
    var = sum((s - mean) ** 2 for s in samples) / (probes - 1) if probes > 1 else float("nan")
    return TraceEstimate(mean, math.sqrt(var / probes) if probes > 1 else float("nan"), probes)


def parameter_hessian_trace(
    loss_closure: Callable[[], Tensor], params: Sequence[Tensor], *, probes: int = 16, seed: int = 0
) -> TraceEstimate:
    """Trace of the Hessian of ``loss_closure()`` in ``params`` (all trainable parameters)."""
    params = [p for p in params if p.requires_grad]
    loss = loss_closure()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    return hutchinson(grads, params, probes=probes, seed=seed)


def logit_hessian_trace(
    loss_fn: Callable[[Tensor], Tensor], logits: Tensor, *, probes: int = 16, seed: int = 0
) -> TraceEstimate:
    """Trace of the Hessian of ``loss_fn`` in the logits (..., V), the body held fixed."""
    z = logits.detach().requires_grad_()
    (grad,) = torch.autograd.grad(loss_fn(z), z, create_graph=True)
    return hutchinson([grad], [z], probes=probes, seed=seed)
