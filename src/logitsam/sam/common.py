"""What the logits-SAM engines share (one owner each): the method names, the checks of ρ, of a method
and of the adaptive form, and the ``sam/*`` metrics every mode logs.

The engines: :mod:`logitsam.sam.logits` (on given logits: weight, gram, chunked), the fused head
(:mod:`logitsam.fused`: every method, its own table in ``fused/methods.py``), and full-model SAM
(:mod:`logitsam.sam.full`). Block sizes live here, once: the engines and the cost models read them.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor

METHODS = ("weight", "gram", "chunked", "auto")  # sam.method; both engines run all of them

# Entries of one block of a (rows, V) or (V, d) temporary: ≤ 16 MiB in float32. Read at call time
# (``common.BLOCK_ENTRIES``), so a test may shrink it to exercise the blocked paths.
BLOCK_ENTRIES = 1 << 22
GRAM_BLOCK_ENTRIES = 1 << 24  # entries of one row block of the N_r × N_r gram matrices


def check_rho(rho: Any) -> float:
    """ρ as a float; a ValueError for anything but a finite real number (bools refused)."""
    if isinstance(rho, bool) or not isinstance(rho, numbers.Real) or not math.isfinite(rho):
        raise ValueError(f"rho must be a finite number, got {rho!r}")
    return float(rho)


def check_method(method: Any, allowed: tuple[str, ...] = METHODS) -> str:
    """``method`` if it is one of ``allowed``, else a ValueError naming the choices."""
    if method not in allowed:
        raise ValueError(f"unknown logits-SAM method {method!r}; choose from {', '.join(allowed)}")
    return method


def check_adaptive(method: str, adaptive: bool, has_weight: bool = True) -> None:
    """The adaptive form (ε ∝ |W|⊙g, the paper's code's ``sam_adaptive``) needs W elementwise: never by
    gram, never without the head weight (a sharded head)."""
    if adaptive and not has_weight:
        raise ValueError("sam.adaptive needs the head weight elementwise; a sharded head (FSDP/ZeRO-3) has none")
    if adaptive and method == "gram":
        raise ValueError("adaptive logits-SAM needs W elementwise (ε ∝ |W|⊙g): use weight, chunked or auto")


def sam_metrics(loss_pre: Tensor, loss_post: Tensor, rho: float, grad_norm: Tensor) -> dict[str, Tensor]:
    """The ``sam/*`` metrics as 0-d float32 tensors on the device (no host sync): the loss at W and at
    W + ε, ‖ε‖ (|ρ| unless the head gradient is zero) and ‖g‖_F."""
    grad_norm = torch.as_tensor(grad_norm).detach()
    return {
        "sam/loss_pre": torch.as_tensor(loss_pre).detach().float(),
        "sam/loss_post": torch.as_tensor(loss_post).detach().float(),
        "sam/eps_norm": torch.where(grad_norm > 0, abs(rho), 0.0).float(),
        "sam/grad_norm": grad_norm.float(),
    }


def eps_scale(rho: float, norm_sq: Tensor) -> Tensor:
    """ρ/‖g‖ from ‖g‖², or 0 when g = 0 (no perturbation); no host sync."""
    nz = norm_sq > 0
    return torch.where(nz, rho * torch.where(nz, norm_sq, 1.0).rsqrt(), 0.0)
