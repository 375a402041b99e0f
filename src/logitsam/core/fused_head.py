"""Fused output head: per-sequence log-probs of the scored tokens straight from hidden states and the
head weight, with the loss gradient (and logits-SAM) produced in the same row chunks.

GPU-first design (docs/design.md §5):
- only scored rows (response tokens) ever meet the head; they are ordered by preference pair and
  cut into chunks of about ``logprobs.CHUNK_ELEMENTS`` logits (large on a GPU: few big tensor-core
  matmuls; small on a CPU), each upcast to float32 only inside its log-softmax;
- chunks hold whole pairs where they fit, so a pair's loss, and with it dL/dz of its rows, is
  known as soon as its chunk is done (every registered loss is a mean of per-pair terms): the
  forward pass also produces dH and dW, and backward only rescales them. A pair longer than a
  chunk is swept twice (log-probs, then gradients with the logits recomputed);
- logits-SAM (``rho != 0``) runs a clean sweep that builds ε's ingredients (``weight``: g = Gᵀ H
  accumulated in the compute dtype; ``gram``: the rows G_r, ε never formed), then the perturbed
  sweep with z' = H Wᵀ + H εᵀ, the shift a separate product added to the float32 logits so bf16
  never rounds ε away; dH = dz'(W + ε) and dW = dz'ᵀ H exactly as for the head W + ε.

The module's autograd function returns the (S,) per-sequence sums; the caller computes the loss
from them. Backward checks that the incoming gradient is the one predicted in forward (up to the
usual scalar: gradient accumulation, loss scaling) and otherwise recomputes with the gradient
it was given, so the result is exact for any use of the sums.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from logitsam.core.fused_vocab import perturbed_sweep_by_vocab
from logitsam.core.products import rows_at_vocab
from logitsam.core.row_plan import RowPlan
from logitsam.sam.common import FUSED_METHODS, check_adaptive, check_method
from logitsam.sam.fused import GramEps, WeightEps, adapt_, choose_fused_method, held_dtype, norm_sq_blocks
from logitsam.sam.logits import eps_scale

PairLosses = Callable[[Tensor, Tensor, Tensor], Tensor]  # (pairs J, sums chosen (|J|,), rejected) -> losses (|J|,)


W_BLOCK_ENTRIES = 1 << 22  # entries of one dW block product when dW's dtype is not the compute dtype


def compute_dtype(weight: Tensor) -> torch.dtype:
    """The matmul dtype: autocast's when it is on for this device, else the head's own."""
    dev = weight.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return weight.dtype


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass
class FusedJob:
    """Everything the fused function needs besides tensors, and what it reports back."""

    plan: RowPlan
    n_pairs: int
    pair_losses: PairLosses | None  # None: log-probs only
    rho: float = 0.0
    method: str = "auto"
    need_grads: bool = True
    adaptive: bool = False  # ε ∝ |W|⊙g (weight method only)
    regather: Callable[[], Any] | None = None  # makes the weight full again for a recomputing backward (FSDP2)
    whole_batch: bool = False  # the loss couples pairs: dL/dsums from the whole batch, never per chunk
    # reported:
    clean_sums: Tensor | None = None
    top_token: Tensor | None = None
    grad_norm: Tensor | None = None
    method_used: str = ""
    stats: dict[str, Tensor] = field(default_factory=dict)


def _pair_grad(job: FusedJob, pairs: Tensor, sums: Tensor) -> Tensor:
    """(S,) dL/dsums for the sequences of ``pairs`` (zeros elsewhere), L = Σ_j losses_j / B.

    A side the loss never reads (a chosen-only NLL term) gets a zero gradient, not an autograd error.
    """
    b = job.n_pairs
    sc, sr = sums[pairs].detach(), sums[pairs + b].detach()
    out = torch.zeros_like(sums)
    with torch.enable_grad():
        sc.requires_grad_()
        sr.requires_grad_()
        losses = job.pair_losses(pairs, sc, sr)
        if not losses.requires_grad:
            return out
        gc, gr = torch.autograd.grad(losses.sum() / b, (sc, sr), allow_unused=True)
    for idx, g in ((pairs, gc), (pairs + b, gr)):
        if g is not None:
            out[idx] = g.to(sums.dtype)
    return out


def _whole_batch_grad(job: FusedJob, h, w, b, cdt, pert) -> Tensor | None:
    """(S,) dL/dsums from every pair's sums at once (a log-probs-only sweep first) for a loss that couples
    pairs (``job.whole_batch``); None otherwise. The sweep's dz and ε's ingredient are linear in it."""
    if not job.whole_batch:
        return None
    sums, _ = _sweep(job, h, w, b, cdt, pert, None)
    return _pair_grad(job, torch.arange(job.n_pairs, device=h.device), sums)


def _sweep(job, h, w, b, cdt, pert, on_dz, *, top=False, fixed_gout=None):
    """One pass over the groups: log-prob sums (S,), and dz of every chunk handed to ``on_dz``.

    dz rows use dL/dsums from the group's own pair losses, or ``fixed_gout`` (S,) when given.
    Returns (sums, u) with u the (S,) dL/dsums that was used. Per chunk the (rows, V) work is a
    few memory passes (GPU-bound by bandwidth there): the logits in the compute dtype, their row
    max, e = exp(z − max) in float32 (in place when z already is), its row sum, and dz written
    straight in the compute dtype; the max-token probability is 1/Σe for free.
    """
    plan, acc = job.plan, _acc(cdt)
    sums = torch.zeros(plan.n_seqs, dtype=acc, device=h.device)
    u = torch.zeros_like(sums)
    lse = torch.empty(plan.labels.shape[0], dtype=acc, device=h.device)
    top_sum = torch.zeros((), dtype=acc, device=h.device)
    y, seq = plan.labels, plan.seq

    def logits(s: int, e: int) -> Tensor:
        z = F.linear(h[s:e].to(cdt), w, b)
        if pert is None:
            return z
        # ε's product stays in its own dtype until it meets the float32 logits (no fp32 copy of it).
        return pert.add_shift(z.to(acc), s, e, h)

    def exp_shifted(z: Tensor, shift: Tensor) -> Tensor:
        """exp(z − shift[:, None]) in float32, reusing z's memory when it is float32 already."""
        return (z.sub_(shift[:, None]) if z.dtype == acc else torch.sub(z, shift[:, None])).exp_()

    for grp in plan.groups:
        kept = None
        for s, e in grp.chunks:
            z = logits(s, e)
            zy = z.gather(1, y[s:e, None]).squeeze(1).to(acc)
            m = z.amax(-1).to(acc)
            ex = exp_shifted(z, m)
            total = ex.sum(-1)
            lse[s:e] = m + total.log()
            sums.index_add_(0, seq[s:e], zy - lse[s:e])
            if top:
                top_sum += total.reciprocal().sum()  # max_v softmax = exp(m − lse) = 1/Σe
            kept = (ex, total) if len(grp.chunks) == 1 and on_dz is not None else None
            del z, ex
        if on_dz is None:
            continue
        g_seq = _pair_grad(job, grp.pairs, sums) if fixed_gout is None else fixed_gout.to(acc)
        if fixed_gout is None:
            u += g_seq
        for s, e in grp.chunks:
            g = g_seq[seq[s:e]]
            if kept is not None:
                ex, coef = kept[0], -g / kept[1]
            else:  # recomputed: normalise with the stored log-sum-exp
                ex, coef = exp_shifted(logits(s, e), lse[s:e]), -g
            kept = None
            k = None
            if cdt == torch.float16:  # fp16 underflows small gradients: scale rows to ~1, consumers undo it
                k = torch.exp2(-torch.floor(torch.log2(g.abs().amax().clamp(min=1e-30))))
                coef, g = coef * k, g * k
            # dz = −g·softmax written straight in the compute dtype (one pass, no float32 copy).
            if cdt == acc:
                dz = ex.mul_(coef[:, None])
            else:
                dz = torch.mul(ex, coef[:, None], out=ex.new_empty(ex.shape, dtype=cdt))
            del ex
            dz.scatter_add_(1, y[s:e, None], g[:, None].to(cdt))  # d logp_y / dz_y = 1 − p_y
            on_dz(s, e, dz if k is None else _Scaled(dz, k))
            del dz
    if top:
        job.top_token = top_sum / max(1, y.shape[0])
    return sums, (fixed_gout if fixed_gout is not None else u)


class _Scaled:
    """dz held as (dz·k) in fp16 with the float32 scale k; ``.to(dtype)`` undoes k, ``.raw`` keeps it."""

    def __init__(self, raw: Tensor, k: Tensor) -> None:
        self.raw, self.k = raw, k

    def to(self, dtype: torch.dtype) -> Tensor:
        return self.raw.to(torch.float32).div_(self.k).to(dtype)


def _make_pert(job: FusedJob, h: Tensor, v: int, cdt: torch.dtype, has_dw: bool):
    method = check_method(job.method, FUSED_METHODS)
    check_adaptive(method, job.adaptive)
    if method == "auto":  # fewest flops whose extra memory stays within one chunk of float32 logits
        budget, nbytes = 4.0 * job.plan.chunk_rows * v, torch.finfo(held_dtype(cdt)).bits // 8
        if job.adaptive:  # needs W elementwise: never gram
            method = "weight" if v * h.shape[1] * nbytes <= budget else "chunked"
        else:
            method = choose_fused_method(h.shape[0], h.shape[1], v, nbytes, budget)
    if method == "chunked" and not has_dw:  # a frozen head has no gradient buffer to hold g in
        method = "weight"
    job.method_used = method
    if method == "chunked":
        return None
    if method == "weight":
        return WeightEps(h, v, cdt)
    if method == "gram":
        return GramEps(h, v, cdt)
    raise AssertionError(method)  # checked above


def _add_dw(d_w: Tensor, dz: Tensor | _Scaled, hc: Tensor, acc: torch.dtype) -> None:
    """d_w += dzᵀ hc. When d_w's dtype is not the compute dtype (fp32 weights under autocast) or dz is
    fp16-scaled: in vocabulary blocks, so the (V, d) product never exists whole in two more dtypes."""
    k = dz.k if isinstance(dz, _Scaled) else None
    dzc = dz.raw if k is not None else dz
    if d_w.dtype == dzc.dtype and k is None:
        d_w.addmm_(dzc.T, hc)
        return
    step = max(1, W_BLOCK_ENTRIES // max(1, d_w.shape[1]))  # rows of dW per block product
    for a in range(0, d_w.shape[0], step):
        part = (dzc[:, a : a + step].T @ hc).to(acc)
        d_w[a : a + step].add_((part if k is None else part.div_(k)).to(d_w.dtype))


def _run(job, h, weight, bias, cdt, *, gout=None, u_clean=None):
    """Forward (gout None) or fallback backward (gout given): sums, u and the gradients."""
    v, acc = weight.shape[0], _acc(cdt)
    w = weight.to(cdt)
    b = None if bias is None else bias.to(cdt)
    if not job.need_grads:
        sums, _ = _sweep(job, h, w, b, cdt, None, None, top=True)
        job.clean_sums = sums
        return sums, None, None, None, None
    d_w = torch.zeros(weight.shape, dtype=weight.dtype, device=weight.device) if weight.requires_grad else None
    d_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if bias is not None and bias.requires_grad else None
    pert = None
    if job.rho != 0:
        pert = _make_pert(job, h, v, cdt, d_w is not None)
        # chunked: g accumulates in dW's own buffer (core/fused_vocab.py), else in the perturbation
        acc_g = pert.accumulate if pert is not None else lambda s, e, dz: _add_dw(d_w, dz, h[s:e].to(cdt), acc)
        if u_clean is None:
            u_clean = _whole_batch_grad(job, h, w, b, cdt, None)
        clean, u0 = _sweep(job, h, w, b, cdt, None, acc_g, top=gout is None, fixed_gout=u_clean)
        g = d_w if pert is None else getattr(pert, "g", None)  # (V, d) for weight / chunked
        if job.adaptive:
            adapt_(g, weight)
        norm_sq = pert.norm_sq(acc) if isinstance(pert, GramEps) else norm_sq_blocks(g, acc)
        scale = eps_scale(job.rho, norm_sq)
        job.clean_sums, job.grad_norm = clean, norm_sq.sqrt()
        job.stats["u_clean"] = u0
        if pert is None:
            return _run_by_vocab(job, h, w, b, cdt, d_w, d_b, scale, gout, bias)
        pert.scale = scale
    d_h = torch.zeros(h.shape, dtype=h.dtype, device=h.device)

    def grads(s: int, e: int, dz: Tensor | _Scaled) -> None:
        k = dz.k if isinstance(dz, _Scaled) else None
        dzc = dz.raw if k is not None else dz  # compute dtype (fp16: scaled by k)
        dh = rows_at_vocab(dzc, w, acc)
        if pert is not None:
            dh += pert.shift_back(dz, acc) if k is None else pert.shift_back(dz.to(acc), acc)  # dz'·ε
        d_h[s:e] = (dh if k is None else dh.div_(k)).to(h.dtype)
        if d_w is not None:
            _add_dw(d_w, dz, h[s:e].to(cdt), acc)
        if d_b is not None:
            db = dzc.sum(0, dtype=acc)
            d_b.add_(db if k is None else db.div_(k))

    top = pert is None and gout is None
    if gout is None:
        gout = _whole_batch_grad(job, h, w, b, cdt, pert)
    sums, u = _sweep(job, h, w, b, cdt, pert, grads, top=top, fixed_gout=gout)
    if pert is None:
        job.clean_sums = sums
    return sums, u, d_h, d_w, (None if d_b is None else d_b.to(bias.dtype))


def _run_by_vocab(job, h, w, b, cdt, d_w, d_b, scale, gout, bias):
    """The perturbed sweep of ``chunked``: g is in d_w, which leaves holding dW' (core/fused_vocab.py)."""
    plan, acc = job.plan, _acc(cdt)
    pairs = torch.arange(job.n_pairs, device=h.device)

    def coef_of(sums: Tensor) -> Tensor:
        return _pair_grad(job, pairs, sums) if gout is None else gout.to(acc)

    sums, u, d_h = perturbed_sweep_by_vocab(
        h, w, b, plan.labels, plan.seq, plan.n_seqs, d_w, scale, coef_of, cdt=cdt, acc=acc,
        tile_elements=plan.chunk_rows * w.shape[0], block_entries=W_BLOCK_ENTRIES, d_b=d_b,
    )
    return sums, u, d_h.to(h.dtype), d_w, (None if d_b is None else d_b.to(bias.dtype))


class _FusedSums(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor | None, job: FusedJob) -> Tensor:
        cdt = compute_dtype(weight)
        dev = weight.device.type
        with torch.autocast(dev, enabled=False):  # our dtypes are explicit
            sums, u, d_h, d_w, d_b = _run(job, h, weight, bias, cdt)
        ctx.job, ctx.cdt = job, cdt
        ctx.grads = (d_h, d_w, d_b)
        ctx.u = u
        ctx.save_for_backward(h, weight, bias)
        return sums

    @staticmethod
    def backward(ctx, d_sums: Tensor):
        job, u = ctx.job, ctx.u
        d_sums = d_sums.to(u.dtype)
        uu = (u * u).sum()
        c = torch.where(uu > 0, (d_sums * u).sum() / torch.where(uu > 0, uu, 1.0), 0.0)
        tol = 1e-10 if u.dtype == torch.float64 else 1e-4
        resid = (d_sums - c * u).norm()
        if ctx.grads is not None and bool(resid <= tol * d_sums.norm() + 1e-30):  # one host sync per step
            d_h, d_w, d_b = ctx.grads
            ctx.grads = None
            out = [None if g is None else g.mul_(c.to(g.dtype)) for g in (d_h, d_w, d_b)]
        else:  # the sums were used by another loss: recompute with the gradient we got
            if job.regather is not None:  # FSDP2 resharded the head after the forward sweep
                job.regather()
            h, weight, bias = ctx.saved_tensors
            with torch.autocast(weight.device.type, enabled=False):
                _, _, *out = _run(job, h, weight, bias, ctx.cdt, gout=d_sums, u_clean=job.stats.get("u_clean"))
        d_h, d_w, d_b = out
        return d_h, d_w, d_b, None


def fused_sequence_sums(h_r: Tensor, weight: Tensor, bias: Tensor | None, job: FusedJob) -> Tensor:
    """(S,) summed log-probs of the scored tokens, the head applied in chunks (see module docstring).

    h_r: (N_r, d) hidden states of ``job.plan``'s rows (with graph); weight (V, d); bias (V,) or
    None. With ``job.need_grads`` the gradient is produced in the forward pass from
    ``job.pair_losses``; with ``job.rho != 0`` the returned sums are at the head W + ε
    (logits-SAM) and ``job.clean_sums`` holds the clean ones.
    """
    if not job.need_grads:
        cdt = compute_dtype(weight)
        with torch.no_grad(), torch.autocast(weight.device.type, enabled=False):
            return _run(job, h_r, weight, bias, cdt)[0]
    return _FusedSums.apply(h_r, weight, bias, job)
