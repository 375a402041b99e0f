"""The fused head's row-ordered sweep: log-prob sums of the scored rows chunk by chunk, and each
chunk's dz = ∂L/∂z handed to a consumer as soon as its pairs' losses are known (docs/design.md §5).

Per chunk the (rows, V) work is a few memory passes (bandwidth-bound on a GPU): the logits in the
compute dtype, their row max, e = exp(z − max) in float32 (in place when z already is), its row sum,
and dz written straight in the compute dtype; the max-token probability is 1/Σe for free. A spec
with ``aligned`` also takes Σe² of the same tile: log Σ_v p(v)² = log Σe² − 2 log Σe, so WPO's token
statistic log p(y) − log Σ_v p(v)² costs one more reduction, never a head product.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from logitsam.fused.perturbations import Perturbation
from logitsam.fused.products import Scaled
from logitsam.fused.row_plan import RowPlan


@dataclass(frozen=True)
class SweepAux:
    """Per-sequence statistics of the clean head that a sweep hands to the pair losses besides the sums.

    aligned: (S,) per-sequence sums over scored tokens of log p(y_t) − log Σ_v p(v)² at the clean head
    (WPO's token statistic, detached), complete for the sequences of the pairs being scored; None
    unless the spec asks for it (``SweepSpec.aligned``). Under logits-SAM the perturbed sweep gets the
    clean sweep's values: they are held fixed.
    """

    aligned: Tensor | None = None


# (pairs J, sums chosen (|J|,), rejected (|J|,), the sweep's per-sequence statistics) -> losses (|J|,)
PairLosses = Callable[[Tensor, Tensor, Tensor, SweepAux], Tensor]


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep needs besides tensors: the row plan, the batch's pair count and its pair losses;
    ``aligned``: the clean sweep also sums log p(y_t) − log Σ_v p(v)² per sequence (:class:`SweepAux`)."""

    plan: RowPlan
    n_pairs: int
    pair_losses: PairLosses | None  # None: log-probs only
    aligned: bool = field(default=False, kw_only=True)  # keyword: subclasses' positional fields keep their places


class SweepOut(NamedTuple):
    """A sweep's results: sums (S,), the dL/dsums u (S,) used, the mean max-token probability (0-d, or
    None) and the clean per-sequence statistics (given or measured in this sweep)."""

    sums: Tensor
    u: Tensor
    top: Tensor | None
    aux: SweepAux


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of a compute dtype: float64 stays, everything else sums in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


OnDz = Callable[[int, int, "Tensor | Scaled"], None]  # rows [s, e) and their dz (e − s, V)


def pair_grad(spec: SweepSpec, pairs: Tensor, sums: Tensor, aux: SweepAux) -> Tensor:
    """(S,) dL/dsums for the sequences of ``pairs`` (zeros elsewhere), L = Σ_j losses_j / B; ``aux``
    the clean per-sequence statistics handed to the pair losses.

    A side the loss never reads (a chosen-only NLL term) gets a zero gradient, not an autograd error.
    """
    b = spec.n_pairs
    sc, sr = sums[pairs].detach(), sums[pairs + b].detach()
    out = torch.zeros_like(sums)
    assert spec.pair_losses is not None  # a gradient sweep always has losses
    with torch.enable_grad():
        sc.requires_grad_()
        sr.requires_grad_()
        losses = spec.pair_losses(pairs, sc, sr, aux)
        if not losses.requires_grad:
            return out
        gc, gr = torch.autograd.grad(losses.sum() / b, (sc, sr), allow_unused=True)
    for idx, g in ((pairs, gc), (pairs + b, gr)):
        if g is not None:
            out[idx] = g.to(sums.dtype)
    return out


def whole_batch_grad(
    spec: SweepSpec,
    h: Tensor,
    w: Tensor,
    b: Tensor | None,
    cdt: torch.dtype,
    pert: Perturbation | None,
    aux: SweepAux | None = None,
) -> tuple[Tensor, SweepAux]:
    """(S,) dL/dsums from every pair's sums at once (a log-probs-only sweep first), for a loss that
    couples pairs: the sweep's dz and ε's ingredient are linear in it. Returns it with the clean
    statistics (``aux`` when given, else measured by this sweep, which must then be clean)."""
    out = sweep(spec, h, w, b, cdt, pert, None, aux=aux)
    return pair_grad(spec, torch.arange(spec.n_pairs, device=h.device), out.sums, out.aux), out.aux


def sweep(
    spec: SweepSpec,
    h: Tensor,
    w: Tensor,
    b: Tensor | None,
    cdt: torch.dtype,
    pert: Perturbation | None,
    on_dz: OnDz | None,
    *,
    top: bool = False,
    fixed_gout: Tensor | None = None,
    aux: SweepAux | None = None,
) -> SweepOut:
    """One pass over the plan's groups: log-prob sums (S,), and dz of every chunk handed to ``on_dz``.

    h: (N_r, d) scored rows; w (V, d), b (V,) or None in the compute dtype ``cdt``; ``pert`` adds ε's
    shift to the logits (None: the clean head). dz rows use dL/dsums from the group's own pair losses,
    or ``fixed_gout`` (S,) when given. ``aux``: the clean statistics for the pair losses; None makes
    this sweep measure them (``spec.aligned``: Σe² beside Σe of every tile), which only a clean sweep
    can. Returns :class:`SweepOut` (u the (S,) dL/dsums used, top the mean max-token probability when
    ``top``).
    """
    plan, acc = spec.plan, acc_dtype(cdt)
    measure = aux is None and spec.aligned
    if measure and pert is not None:
        raise ValueError("the per-sequence statistics are the clean head's: a perturbed sweep is given them")
    aligned = torch.zeros(plan.n_seqs, dtype=acc, device=h.device) if measure else None
    aux_now = SweepAux(aligned) if aux is None else aux  # filled in place group by group when measured
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
            lp_y = zy - lse[s:e]
            sums.index_add_(0, seq[s:e], lp_y)
            if aligned is not None:  # log Σ_v p² = log Σe² − 2 log Σe; both sums ≥ 1 (the max has e = 1)
                sq = torch.linalg.vector_norm(ex, 2, -1).square()  # a reduction: no second tile
                aligned.index_add_(0, seq[s:e], lp_y - sq.log() + 2 * total.log())
            if top:
                top_sum += total.reciprocal().sum()  # max_v softmax = exp(m − lse) = 1/Σe
            kept = (ex, total) if len(grp.chunks) == 1 and on_dz is not None else None
            del z, ex
        if on_dz is None:
            continue
        g_seq = pair_grad(spec, grp.pairs, sums, aux_now) if fixed_gout is None else fixed_gout.to(acc)
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
            on_dz(s, e, dz if k is None else Scaled(dz, k))
            del dz
    mean_top = top_sum / max(1, y.shape[0]) if top else None
    return SweepOut(sums, (fixed_gout if fixed_gout is not None else u), mean_top, aux_now)
