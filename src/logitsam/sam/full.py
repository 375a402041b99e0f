"""Vanilla SAM over every trainable parameter: the baseline logits-SAM is compared against.

Two full forward/backward passes: gradient at θ, perturb θ by ε = ρ·∇/‖∇‖ (global norm over all
parameters), gradient at θ + ε accumulated into ``.grad``, then θ restored bit for bit from a copy
(which is the perturbation buffer the paper reports as vanilla SAM's memory cost).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from logitsam.sam.common import sam_metrics


@dataclass
class FullSamOutput:
    """Detached clean / perturbed losses, ‖ε‖ and the pre-perturbation gradient norm."""

    loss_pre: Tensor
    loss_post: Tensor
    eps_norm: Tensor
    grad_norm: Tensor

    @property
    def metrics(self) -> dict[str, Tensor]:
        """The ``sam/*`` metrics, on the device (sam.common.sam_metrics; ‖ε‖ as measured)."""
        return {**sam_metrics(self.loss_pre, self.loss_post, 0.0, self.grad_norm), "sam/eps_norm": self.eps_norm}


def full_sam_backward(
    params: Iterable[Tensor],
    closure: Callable[[], Tensor],
    *,
    rho: float,
    backward: Callable[[Tensor], None] = Tensor.backward,
) -> FullSamOutput:
    """Accumulate SAM's gradient ∇L(θ + ε) into ``p.grad`` for every parameter in ``params``.

    closure: recomputes the scalar loss from the current parameters (forward only, no backward).
    backward: how the perturbed loss is back-propagated (e.g. ``accelerator.backward`` with scaling).
    Parameters with no gradient path are left unperturbed. ρ may be negative.
    """
    params = [p for p in params if p.requires_grad]
    loss_pre = closure()
    grads = torch.autograd.grad(loss_pre, params, allow_unused=True)
    pairs = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None]
    norms = [torch.linalg.vector_norm(g if g.dtype == torch.float64 else g.float()) for _, g in pairs]
    norm = torch.linalg.vector_norm(torch.stack(norms))
    scale = torch.where(norm > 0, rho / torch.where(norm > 0, norm, 1.0), 0.0)
    saved = [p.detach().clone() for p, _ in pairs]
    try:
        with torch.no_grad():
            for p, g in pairs:
                p.add_((g * scale).to(p.dtype))
        loss_post = closure()
        backward(loss_post)
    finally:
        with torch.no_grad():
            for (p, _), orig in zip(pairs, saved, strict=True):
                p.copy_(orig)
    eps_norm = torch.where(norm > 0, norm.new_tensor(abs(rho)), 0.0)
    return FullSamOutput(loss_pre.detach(), loss_post.detach(), eps_norm, norm.detach())
