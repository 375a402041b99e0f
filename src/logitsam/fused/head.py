"""Fused output head: per-sequence log-probs of the scored tokens straight from hidden states and the
head weight, with the loss gradient (and logits-SAM) produced in the same row chunks.

GPU-first design (docs/design.md §5):
- only scored rows (response tokens) ever meet the head; they are ordered by preference pair and
  cut into chunks of about ``core/logprobs.py``'s ``CHUNK_ELEMENTS`` logits (large on a GPU: few big tensor-core
  matmuls; small on a CPU), each upcast to float32 only inside its log-softmax;
- chunks hold whole pairs where they fit, so a pair's loss, and with it dL/dz of its rows, is
  known as soon as its chunk is done (every registered loss is a mean of per-pair terms): the
  forward pass also produces dH and dW, and backward only rescales them. A pair longer than a
  chunk is swept twice (log-probs, then gradients with the logits recomputed);
- logits-SAM (``rho != 0``) runs a clean sweep that builds ε's ingredients (``weight``: g = Gᵀ H
  accumulated in the compute dtype; ``gram``: the rows G_r, ε never formed), then the perturbed
  sweep with z' = H Wᵀ + H εᵀ, the shift a separate product added to the float32 logits so bf16
  never rounds ε away; dH = dz'(W + ε) and dW = dz'ᵀ H exactly as for the head W + ε.

:func:`fused_sequence_sums` returns the (S,) per-sequence sums (the caller computes the loss from them)
and a :class:`FusedResult`. The sweep is fused/sweep.py, the perturbations fused/perturbations.py, the
method table fused/methods.py, ``chunked``'s vocabulary-order sweep fused/vocab.py.
Backward checks that the incoming gradient is the one predicted in forward (up to the usual scalar:
gradient accumulation, loss scaling) and otherwise recomputes with the gradient it was given, so the
result is exact for any use of the sums.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from logitsam.fused.methods import FUSED_METHODS, check_fused_method, choose_fused_method
from logitsam.fused.perturbations import Perturbation, adapt_, held_dtype, norm_sq_blocks
from logitsam.fused.products import Scaled, rows_at_vocab
from logitsam.fused.sweep import SweepAux, SweepSpec, acc_dtype, pair_grad, sweep, whole_batch_grad
from logitsam.fused.vocab import perturbed_sweep_by_vocab
from logitsam.sam import common
from logitsam.sam.common import eps_scale


def compute_dtype(weight: Tensor) -> torch.dtype:
    """The matmul dtype: autocast's when it is on for this device, else the head's own."""
    dev = weight.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return weight.dtype


@dataclass(frozen=True)
class FusedJob(SweepSpec):
    """The fused call's inputs besides tensors (frozen): the plan, the pair losses and logits-SAM's knobs."""

    rho: float = 0.0
    method: str = "auto"
    need_grads: bool = True
    adaptive: bool = False  # ε ∝ |W|⊙g (methods that hold g elementwise)
    regather: Callable[[], Any] | None = None  # makes the weight full again for a recomputing backward (FSDP2, ZeRO-3)
    land_grad: Callable[[], Any] | None = None  # before backward returns dW (ZeRO-3: the head gathered to take it)
    whole_batch: bool = False  # the loss couples pairs: dL/dsums from the whole batch, never per chunk


@dataclass(frozen=True)
class FusedResult:
    """What the fused call reports besides the sums: the clean sums (at W; (S,), detached), the mean
    max-token probability at W (0-d), ‖g‖_F (0-d; logits-SAM only), the method that ran and the clean
    per-sequence statistics the pair losses were given (:class:`~logitsam.fused.sweep.SweepAux`)."""

    clean_sums: Tensor
    top_token: Tensor | None
    grad_norm: Tensor | None = None
    method_used: str = ""
    aux: SweepAux = field(default_factory=SweepAux)


class _Pass(NamedTuple):
    """One forward (or recomputing backward) pass: sums at the head used and their gradients."""

    sums: Tensor
    u: Tensor | None  # (S,) dL/dsums the gradients were made with
    d_h: Tensor | None
    d_w: Tensor | None
    d_b: Tensor | None
    result: FusedResult
    u_clean: Tensor | None = None  # the clean sweep's dL/dsums, reused by a recomputing backward


def _make_pert(job: FusedJob, h: Tensor, v: int, cdt: torch.dtype, has_dw: bool) -> tuple[str, Perturbation | None]:
    """The method that runs (``auto`` resolved) and its perturbation (None: ``chunked``'s buffer)."""
    method = check_fused_method(job.method, job.adaptive)
    if method == "auto":  # fewest flops whose extra memory stays within one chunk of float32 logits
        budget, nbytes = 4.0 * job.plan.chunk_rows * v, torch.finfo(held_dtype(cdt)).bits // 8
        method = choose_fused_method(h.shape[0], h.shape[1], v, nbytes, budget, adaptive=job.adaptive)
    row = FUSED_METHODS[method]
    if row.make is None and not has_dw:  # a frozen head has no gradient buffer to hold g in
        method, row = "weight", FUSED_METHODS["weight"]
    return method, (None if row.make is None else row.make(h, v, cdt))


def _add_dw(d_w: Tensor, dz: Tensor | Scaled, hc: Tensor, acc: torch.dtype) -> None:
    """d_w += dzᵀ hc. When d_w's dtype is not the compute dtype (fp32 weights under autocast) or dz is
    fp16-scaled: in vocabulary blocks, so the (V, d) product never exists whole in two more dtypes."""
    k = dz.k if isinstance(dz, Scaled) else None
    dzc = dz.raw if isinstance(dz, Scaled) else dz
    if d_w.dtype == dzc.dtype and k is None:
        d_w.addmm_(dzc.T, hc)
        return
    step = max(1, common.BLOCK_ENTRIES // max(1, d_w.shape[1]))  # rows of dW per block product
    for a in range(0, d_w.shape[0], step):
        part = (dzc[:, a : a + step].T @ hc).to(acc)
        d_w[a : a + step].add_((part if k is None else part.div_(k)).to(d_w.dtype))


def _run(
    job: FusedJob,
    h: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    cdt: torch.dtype,
    *,
    gout: Tensor | None = None,
    u_clean: Tensor | None = None,
) -> _Pass:
    """Forward (gout None) or fallback backward (gout (S,) given): sums, u and the gradients."""
    v, acc = weight.shape[0], acc_dtype(cdt)
    w = weight.to(cdt)
    b = None if bias is None else bias.to(cdt)
    if not job.need_grads:
        out = sweep(job, h, w, b, cdt, None, None, top=True)
        return _Pass(out.sums, None, None, None, None, FusedResult(out.sums, out.top, aux=out.aux))
    d_w = torch.zeros(weight.shape, dtype=weight.dtype, device=weight.device) if weight.requires_grad else None
    d_b = None
    if bias is not None and bias.requires_grad:
        d_b = torch.zeros(bias.shape, dtype=acc, device=bias.device)
    pert, method, clean, top, grad_norm, scale = None, "", None, None, None, None
    aux: SweepAux | None = None  # the clean statistics: measured by the first clean sweep, then held fixed
    if job.rho != 0:
        method, pert = _make_pert(job, h, v, cdt, d_w is not None)
        # chunked: g accumulates in dW's own buffer (fused/vocab.py), else in the perturbation

        def acc_g(s: int, e: int, dz: Tensor | Scaled) -> None:
            if pert is not None:
                pert.accumulate(s, e, dz)
            else:
                assert d_w is not None
                _add_dw(d_w, dz, h[s:e].to(cdt), acc)

        if u_clean is None and job.whole_batch:
            u_clean, aux = whole_batch_grad(job, h, w, b, cdt, None)
        clean, u_clean, top, aux = sweep(job, h, w, b, cdt, None, acc_g, top=gout is None, fixed_gout=u_clean, aux=aux)
        g = d_w if pert is None else getattr(pert, "g", None)  # (V, d) for methods that hold g
        if job.adaptive:
            assert g is not None  # checked: adaptive rows hold g
            adapt_(g, weight)
        norm_sq = norm_sq_blocks(g, acc) if g is not None else pert.norm_sq(acc)  # type: ignore[union-attr]
        scale, grad_norm = eps_scale(job.rho, norm_sq), norm_sq.sqrt()
        if pert is None:
            assert d_w is not None
            sums, u, d_h = _sweep_by_vocab(job, h, w, b, cdt, d_w, d_b, scale, gout, aux)
            res = FusedResult(clean, top, grad_norm, method, aux)
            return _Pass(sums, u, d_h.to(h.dtype), d_w, _cast(d_b, bias), res, u_clean)
        pert.scale = scale
    d_h = torch.zeros(h.shape, dtype=h.dtype, device=h.device)

    def grads(s: int, e: int, dz: Tensor | Scaled) -> None:
        k = dz.k if isinstance(dz, Scaled) else None
        dzc = dz.raw if isinstance(dz, Scaled) else dz  # compute dtype (fp16: scaled by k)
        dh = rows_at_vocab(dzc, w, acc)
        if pert is not None:
            dh += pert.shift_back(dzc if k is None else dz.to(acc), acc)  # dz'·ε
        d_h[s:e] = (dh if k is None else dh.div_(k)).to(h.dtype)
        if d_w is not None:
            _add_dw(d_w, dz, h[s:e].to(cdt), acc)
        if d_b is not None:
            db = dzc.sum(0, dtype=acc)
            d_b.add_(db if k is None else db.div_(k))

    want_top = pert is None and gout is None
    if gout is None and job.whole_batch:
        gout, aux = whole_batch_grad(job, h, w, b, cdt, pert, aux)
    sums, u, top_now, aux = sweep(job, h, w, b, cdt, pert, grads, top=want_top, fixed_gout=gout, aux=aux)
    if pert is None:
        return _Pass(sums, u, d_h, d_w, _cast(d_b, bias), FusedResult(sums, top_now, aux=aux), u_clean)
    assert clean is not None  # the clean sweep ran
    res = FusedResult(clean, top, grad_norm, method, aux)
    return _Pass(sums, u, d_h, d_w, _cast(d_b, bias), res, u_clean)


def _cast(d_b: Tensor | None, bias: Tensor | None) -> Tensor | None:
    return None if d_b is None or bias is None else d_b.to(bias.dtype)


def _sweep_by_vocab(
    job: FusedJob,
    h: Tensor,
    w: Tensor,
    b: Tensor | None,
    cdt: torch.dtype,
    d_w: Tensor,
    d_b: Tensor | None,
    scale: Tensor,
    gout: Tensor | None,
    aux: SweepAux,
) -> tuple[Tensor, Tensor, Tensor]:
    """The perturbed sweep of ``chunked``: g is in d_w, which leaves holding dW' (fused/vocab.py); the
    pair losses get the clean sweep's statistics ``aux``."""
    acc = acc_dtype(cdt)
    pairs = torch.arange(job.n_pairs, device=h.device)

    def coef_of(sums: Tensor) -> Tensor:
        return pair_grad(job, pairs, sums, aux) if gout is None else gout.to(acc)

    plan = job.plan
    return perturbed_sweep_by_vocab(
        h, w, b, plan.labels, plan.seq, plan.n_seqs, d_w, scale, coef_of, cdt=cdt, acc=acc,
        tile_elements=plan.chunk_rows * w.shape[0], block_entries=common.BLOCK_ENTRIES, d_b=d_b,
    )  # fmt: skip


class _FusedSums(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, h: Tensor, weight: Tensor, bias: Tensor | None, job: FusedJob, box: list) -> Tensor:
        cdt = compute_dtype(weight)
        with torch.autocast(weight.device.type, enabled=False):  # our dtypes are explicit
            out = _run(job, h, weight, bias, cdt)
        box.append(out.result)
        ctx.job, ctx.cdt, ctx.u, ctx.u_clean = job, cdt, out.u, out.u_clean
        ctx.grads = (out.d_h, out.d_w, out.d_b)
        ctx.save_for_backward(h, weight, bias)
        return out.sums

    @staticmethod
    def backward(ctx: Any, d_sums: Tensor) -> tuple[Tensor | None, ...]:
        job, u = ctx.job, ctx.u
        d_sums = d_sums.to(u.dtype)
        uu = (u * u).sum()
        c = torch.where(uu > 0, (d_sums * u).sum() / torch.where(uu > 0, uu, 1.0), 0.0)
        tol = 1e-10 if u.dtype == torch.float64 else 1e-4
        resid = (d_sums - c * u).norm()
        if ctx.grads is not None and bool(resid <= tol * d_sums.norm() + 1e-30):  # one host sync per step
            grads = ctx.grads
            ctx.grads = None
            d_h, d_w, d_b = (None if g is None else g.mul_(c.to(g.dtype)) for g in grads)
        else:  # the sums were used by another loss: recompute with the gradient we got
            if job.regather is not None:  # FSDP2 / ZeRO-3 resharded the head after the forward sweep
                job.regather()
            h, weight, bias = ctx.saved_tensors
            with torch.autocast(weight.device.type, enabled=False):
                out = _run(job, h, weight, bias, ctx.cdt, gout=d_sums, u_clean=ctx.u_clean)
            d_h, d_w, d_b = out.d_h, out.d_w, out.d_b
        if job.land_grad is not None and (d_w is not None or d_b is not None):
            job.land_grad()
        return d_h, d_w, d_b, None, None


def fused_sequence_sums(h_r: Tensor, weight: Tensor, bias: Tensor | None, job: FusedJob) -> tuple[Tensor, FusedResult]:
    """(S,) summed log-probs of the scored tokens, the head applied in chunks (see module docstring),
    and the call's :class:`FusedResult`.

    h_r: (N_r, d) hidden states of ``job.plan``'s rows (with graph); weight (V, d); bias (V,) or
    None. With ``job.need_grads`` the gradient is produced in the forward pass from
    ``job.pair_losses``; with ``job.rho != 0`` the returned sums are at the head W + ε
    (logits-SAM) and the result's ``clean_sums`` holds the clean ones.
    """
    if not job.need_grads:
        cdt = compute_dtype(weight)
        with torch.no_grad(), torch.autocast(weight.device.type, enabled=False):
            out = _run(job, h_r, weight, bias, cdt)
        return out.sums, out.result
    box: list[FusedResult] = []
    sums = _FusedSums.apply(h_r, weight, bias, job, box)
    return sums, box[0]
