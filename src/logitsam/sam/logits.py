"""logits-SAM: sharpness-aware minimization of the output layer only (paper §3.3, Algorithm 1).

Model = body producing hidden states H (N, d) + head W (V, d), logits z = H Wᵀ + b. With
G = ∂L/∂z at the clean logits (detached; rows of unscored tokens are zero), the head gradient is
g = Gᵀ H and the perturbation ε = ρ·g/‖g‖_F. The loss is evaluated at z' = H (W + ε)ᵀ + b with ε a
constant, so one backward gives SAM's gradient at W + ε for both head and body.

These methods work on logits the model already produced: the trainer's default is the fused head
(:mod:`logitsam.fused`); this module serves sharded heads (FSDP / ZeRO-3), heads that are not
a plain linear layer, and direct callers. Methods (all exact, docs/design.md §4):
- ``weight``  the paper's: build ε (V, d) and run the head again with W + ε.
- ``gram``    logit space: H εᵀ = (ρ/‖g‖)(H H_rᵀ) G_r, ‖g‖² = Σ (H_r H_rᵀ) ⊙ (G_r G_rᵀ); only the N_r
              rows with non-zero G enter, no V×d buffer, W never touched (no gather under
              FSDP/ZeRO-3), the clean logits are reused.
- ``chunked`` weight method over vocabulary blocks, ε never whole (for N_r ≥ d when memory is tight).
- ``auto``    the cheapest by the flop model below, within an optional extra-memory budget; never
              ``weight`` for a bf16/fp16 or sharded head.

Precision: the perturbed logits are float32 (float64 for float64 inputs); ``gram`` runs its
products in bf16 for bf16 hidden states (tensor cores), else in float32/float64. With bf16
weights ρ·g/‖g‖ is far below bf16's spacing, so ``weight`` (which adds ε to W in W's dtype, as
the paper's code does) loses most of ε; ``gram`` and ``chunked`` add the perturbation to float32
logits and keep it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import logitsam.sam.common as common
from logitsam.sam.common import check_adaptive, check_method, check_rho, eps_scale, sam_metrics
from logitsam.sam.costs import cheapest, method_costs


def _check_inputs(hidden: Any, weight: Any, bias: Any, logits: Any, block: Any) -> int:
    """Shapes and dtypes of perturb's arguments, each problem named; returns V."""
    if not isinstance(hidden, Tensor) or not hidden.is_floating_point() or hidden.dim() < 2:
        raise ValueError(f"hidden must be a floating tensor (..., d), got {getattr(hidden, 'shape', type(hidden))}")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be an int ≥ 1, got {block!r}")
    if weight is not None:
        if not isinstance(weight, Tensor) or weight.dim() != 2 or not weight.is_floating_point():
            raise ValueError(f"weight must be a floating (V, d) tensor, got {getattr(weight, 'shape', type(weight))}")
        if weight.shape[1] != hidden.shape[-1]:
            raise ValueError(f"hidden has d={hidden.shape[-1]} but weight is {tuple(weight.shape)} (V, d)")
        if weight.dtype != hidden.dtype:
            raise ValueError(f"hidden is {hidden.dtype} but weight is {weight.dtype}: give both in one dtype")
    v = weight.shape[0] if weight is not None else logits.shape[-1]
    if bias is not None and (not isinstance(bias, Tensor) or tuple(bias.shape) != (v,)):
        raise ValueError(f"bias must have shape ({v},), got {tuple(getattr(bias, 'shape', ()))}")
    if logits is not None and tuple(logits.shape) != (*hidden.shape[:-1], v):
        raise ValueError(f"logits have shape {tuple(logits.shape)}, expected {(*hidden.shape[:-1], v)}")
    for name, x in (("bias", bias), ("logits", logits)):
        if x is not None and x.dtype != hidden.dtype:
            raise ValueError(f"hidden is {hidden.dtype} but {name} is {x.dtype}: give both in one dtype")
    return v


def _acc(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()


def choose_method(
    n: int, n_r: int, d: int, v: int, *, max_extra_bytes: float | None = None, allow_weight: bool = True
) -> str:
    """Cheapest method in flops whose extra memory fits ``max_extra_bytes`` (None = no limit).

    ``allow_weight=False`` (bf16/fp16 heads, sharded heads) leaves only the logit-space methods.
    """
    costs = method_costs(n, n_r, d, v)
    if not allow_weight:
        del costs["weight"]
    return cheapest(costs, max_extra_bytes, "chunked")


def _grad_norm_sq(h_r: Tensor, g_r: Tensor, block: int) -> Tensor:
    """‖G_rᵀ H_r‖_F² without a V×d buffer: gram identity when N_r ≤ d, else vocabulary blocks."""
    if h_r.shape[0] <= h_r.shape[1]:
        return ((h_r @ h_r.T) * (g_r @ g_r.T)).sum()
    total = h_r.new_zeros(())
    for s in range(0, g_r.shape[1], block):
        total = total + (g_r[:, s : s + block].T @ h_r).square().sum()
    return total


def _nonzero_rows(g: Tensor) -> Tensor:
    """Indices of rows of g (N, V) with any non-zero entry, scanning in blocks (no (N, V) mask)."""
    step = max(1, common.BLOCK_ENTRIES // max(1, g.shape[1]))
    flags = torch.cat([(g[s : s + step] != 0).any(-1) for s in range(0, g.shape[0], step)]) if len(g) else g[:, 0] != 0
    return flags.nonzero().squeeze(-1)


def _eps_block(g_r: Tensor, h_r: Tensor, s: int, block: int, w_abs: Tensor | None) -> Tensor:
    """Rows [s, s + block) of the (unscaled) perturbation direction: G_rᵀH_r, times |W| if adaptive."""
    g = g_r[:, s : s + block].T @ h_r
    return g if w_abs is None else g.mul_(w_abs[s : s + block].to(g.dtype))


def _blocked_norm_sq(h_r: Tensor, g_r: Tensor, block: int, w_abs: Tensor | None) -> Tensor:
    total = h_r.new_zeros(())
    for s in range(0, g_r.shape[1], block):
        total = total + _eps_block(g_r, h_r, s, block, w_abs).square().sum()
    return total


class _BlockedPerturbation(torch.autograd.Function):
    """Δ = H εᵀ with ε = scale·G_rᵀ H_r (⊙|W| if adaptive) built one vocabulary block at a time, in both passes."""

    @staticmethod
    def forward(ctx, h: Tensor, h_r: Tensor, g_r: Tensor, scale: Tensor, block: int, w_abs: Tensor | None) -> Tensor:
        out = h.new_empty(h.shape[0], g_r.shape[1])
        for s in range(0, g_r.shape[1], block):
            out[:, s : s + block] = h @ (scale * _eps_block(g_r, h_r, s, block, w_abs)).T
        ctx.save_for_backward(h_r, g_r, scale, w_abs)
        ctx.block = block
        return out

    @staticmethod
    def backward(ctx, d_out: Tensor):
        h_r, g_r, scale, w_abs = ctx.saved_tensors
        d_h = None
        for s in range(0, g_r.shape[1], ctx.block):
            part = d_out[:, s : s + ctx.block] @ (scale * _eps_block(g_r, h_r, s, ctx.block, w_abs))
            d_h = part if d_h is None else d_h + part
        return d_h, None, None, None, None, None


@dataclass
class Perturbed:
    """Perturbed logits (..., V) with graph, the method used, ‖g‖_F and ‖ε‖_F (detached)."""

    logits: Tensor
    method: str
    grad_norm: Tensor
    eps_norm: Tensor


def perturb(
    hidden: Tensor,
    weight: Tensor | None,
    grad_logits: Tensor,
    *,
    rho: float,
    method: str = "auto",
    bias: Tensor | None = None,
    logits: Tensor | None = None,
    block: int = 8192,
    max_extra_bytes: float | None = None,
    adaptive: bool = False,
) -> Perturbed:
    """Logits at the perturbed head W + ε, ε = ρ·g/‖g‖_F, g = grad_logitsᵀ·hidden, ε constant.

    hidden: (N, d) or (B, T, d); weight: (V, d), or None for a sharded head (then ``logits`` is
    required and ``weight`` is not available as a method); bias: (V,) or None (never perturbed);
    grad_logits: ∂L/∂z at the clean logits, shape (N, V) or (B, T, V); zero rows are unscored.
    logits: optional clean logits H Wᵀ + b already computed with graph (reused by gram/chunked).
    rho: may be negative (theory mode). method: weight | gram | chunked | auto.
    adaptive: ε = ρ·(|W|⊙g)/‖|W|⊙g‖ as the paper's code's ``sam_adaptive`` (not ASAM's
    ρ·W²⊙g/‖|W|⊙g‖); needs W elementwise, so weight or chunked (auto picks one).
    Returns Perturbed: the (..., V) logits (float32, or float64 for float64 inputs) whose gradients
    to hidden, weight and bias equal those of ``hidden @ (weight + ε).T + bias``, the method used,
    ‖g‖_F and ‖ε‖_F.
    """
    check_method(method)
    if weight is None and (logits is None or method == "weight"):
        raise ValueError("without the head weight (sharded head) give the clean logits and use gram/chunked/auto")
    check_adaptive(method, adaptive, has_weight=weight is not None)
    rho = check_rho(rho)
    v, d = _check_inputs(hidden, weight, bias, logits, block), hidden.shape[-1]
    lead = hidden.shape[:-1]
    if not isinstance(grad_logits, Tensor) or not grad_logits.is_floating_point():
        got = getattr(grad_logits, "dtype", type(grad_logits))
        raise ValueError(f"grad_logits must be a floating tensor, got {got}")
    if grad_logits.shape != (*lead, v):
        raise ValueError(f"grad_logits has shape {tuple(grad_logits.shape)}, expected {(*lead, v)}")
    h = _acc(hidden.reshape(-1, d))
    g2 = grad_logits.detach().reshape(-1, v)
    rows = _nonzero_rows(g2)  # only scored rows carry gradient
    h_r, g_r = h.detach()[rows], g2[rows].to(h.dtype)  # g in the hidden states' accumulation dtype, whatever its own
    precise = weight is not None and weight.dtype in (torch.float32, torch.float64)
    if method == "auto" and adaptive:
        method = "weight" if precise else "chunked"
    elif method == "auto":
        # W + ε in bf16/fp16 rounds ε away (module docstring): auto keeps to logit space there.
        method = choose_method(h.shape[0], rows.numel(), d, v, max_extra_bytes=max_extra_bytes, allow_weight=precise)
    w_abs = None
    if adaptive:
        assert weight is not None  # check_adaptive: the adaptive form needs the weight
        w_abs = _acc(weight.detach().abs())

    if method == "weight":
        assert weight is not None  # a weight-less (sharded) head runs gram
        g = g_r.T @ h_r  # (V, d): the paper's head gradient
        if w_abs is not None:
            g.mul_(w_abs)  # the official code's adaptive form, |W|⊙g
        norm_sq = g.square().sum()
        eps = g.mul_(eps_scale(rho, norm_sq))
        out = _acc(F.linear(hidden, weight + eps.to(weight.dtype), bias))
    else:
        norm_sq = _grad_norm_sq(h_r, g_r, block) if w_abs is None else _blocked_norm_sq(h_r, g_r, block, w_abs)
        scale = eps_scale(rho, norm_sq)
        if logits is None:
            assert weight is not None  # _check_inputs: logits or the weight
            logits = F.linear(hidden, weight, bias)
        z = _acc(logits.reshape(-1, v))
        if method == "gram" and hidden.dtype == torch.bfloat16:
            # Tensor-core products: bf16 keeps fp32's range and ~3 digits, plenty for a shift
            # added to float32 logits (the bf16 test bounds its error by 1e-2 relative).
            hb = hidden.reshape(-1, d)
            k = hb @ h_r.to(hb.dtype).T
            out = z + (k @ g_r.to(hb.dtype)).float() * scale
        elif method == "gram":
            # Keep H (with graph) on the left so the body gets the ε-term of the SAM gradient.
            out = torch.addmm(z, (h @ h_r.T) * scale, g_r)
        else:
            out = z + _BlockedPerturbation.apply(h, h_r, g_r, scale, block, w_abs)
        out = out.reshape(*lead, v)
    grad_norm = norm_sq.sqrt().detach()
    eps_norm = torch.where(norm_sq > 0, grad_norm.new_tensor(abs(rho)), 0.0)
    return Perturbed(out, method, grad_norm, eps_norm)


def perturbed_logits(hidden: Tensor, weight: Tensor | None, grad_logits: Tensor, **kwargs: Any) -> Tensor:
    """The logits of :func:`perturb` alone (same arguments)."""
    return perturb(hidden, weight, grad_logits, **kwargs).logits


@dataclass
class SamOutput:
    """Result of :func:`logits_sam_loss`.

    loss: scalar at the perturbed logits, with graph (backward gives the SAM gradient).
    loss_pre / loss_post: detached clean and perturbed losses. eps_norm = ‖ε‖ (|ρ| unless g = 0);
    grad_norm = ‖g‖_F. aux_pre / aux_post: whatever the loss function returned beside the loss,
    at the clean and perturbed logits (detach before logging).
    """

    loss: Tensor
    loss_pre: Tensor
    loss_post: Tensor
    eps_norm: Tensor
    grad_norm: Tensor
    method: str
    aux_pre: Any = None
    aux_post: Any = None
    metrics: dict[str, Tensor] = field(default_factory=dict)


LogitsLoss = Callable[[Tensor], "Tensor | tuple[Tensor, Any]"]


def _split(result: Tensor | tuple[Tensor, Any]) -> tuple[Tensor, Any]:
    return result if isinstance(result, tuple) else (result, None)


def logits_sam_loss(
    loss_fn: LogitsLoss,
    hidden: Tensor,
    weight: Tensor | None,
    bias: Tensor | None = None,
    *,
    rho: float,
    method: str = "auto",
    logits: Tensor | None = None,
    block: int = 8192,
    max_extra_bytes: float | None = None,
    adaptive: bool = False,
) -> SamOutput:
    """One logits-SAM step for a loss written as a function of the logits.

    loss_fn: logits (..., V) -> scalar loss, or (loss, aux). hidden (..., d), weight (V, d), bias (V,).
    1. clean logits (reused if given), G = ∂L/∂z with no graph kept through the loss;
    2. perturbed logits by :func:`perturb`; 3. the loss there, returned with graph.
    """
    if logits is None:
        if weight is None:
            raise ValueError("logits_sam_loss needs the head weight or the clean logits")
        _check_inputs(hidden, weight, bias, None, block)
        logits = F.linear(hidden, weight, bias)
    clean = logits.detach().requires_grad_()
    with torch.enable_grad():
        loss_pre, aux_pre = _split(loss_fn(clean))
        if not isinstance(loss_pre, Tensor) or loss_pre.dim() != 0 or not loss_pre.requires_grad:
            raise ValueError("loss_fn must return a scalar tensor (or (scalar, aux)) computed from its logits")
        (grad,) = torch.autograd.grad(loss_pre, clean)
    del clean
    p = perturb(
        hidden,
        weight,
        grad,
        rho=rho,
        method=method,
        bias=bias,
        logits=logits,
        block=block,
        max_extra_bytes=max_extra_bytes,
        adaptive=adaptive,
    )
    del grad, logits  # the graph keeps what backward needs; free the rest now
    loss, aux_post = _split(loss_fn(p.logits))
    out = SamOutput(loss, loss_pre.detach(), loss.detach(), p.eps_norm, p.grad_norm, p.method, aux_pre, aux_post)
    out.metrics = sam_metrics(out.loss_pre, out.loss_post, rho, out.grad_norm)  # on the device: no host sync
    return out
