"""Preference losses as pure functions of per-sequence log-probs (the registry: registry.py).

Every loss takes a :class:`PreferenceLogps` (policy and, where needed, reference log-probs of the
chosen and rejected responses, summed over response tokens, plus response lengths) and keyword
hyperparameters, and returns a :class:`LossOutput` with per-example losses and rewards.

The registry (:mod:`logitsam.core.registry`) maps a name to a spec that tells callers everything they
need (reference model or not, which log-prob normalisation the loss works on, default
hyperparameters and their ranges), so no caller matches on loss names.

Notation (docs/design.md §3): Δ± = logp_θ(y±) − logp_ref(y±), δ = Δ+ − Δ−, β the temperature.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class PreferenceLogps:
    """Per-sequence log-probs of a batch of B preference pairs; every tensor has shape (B,).

    ``chosen``/``rejected`` are policy log-probs summed over response tokens; ``*_lengths`` are the
    response token counts; ``ref_*`` the reference model's summed log-probs (None when the loss is
    reference-free); ``*_scores`` optional data-set reward scores (e.g. UltraFeedback ratings).
    Supplied only when a loss's hyperparameters ask for them (``registry.extra_inputs``):
    ``*_shared`` (LD-DPO, ``ld_alpha`` ≠ 1) the same sums over each pair's first min(|y+|, |y−|) response
    tokens, policy and ``ref_*_shared`` reference (a reference already length-desensitised, as TRL's
    precomputed one, passes its value as both); ``*_wpo`` (WPO, ``use_weighting``) the clean policy's
    detached mean over response tokens of log p(y_t) − log Σ_v p(v)², the log of WPO's per-response weight.
    """

    chosen: Tensor
    rejected: Tensor
    chosen_lengths: Tensor
    rejected_lengths: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    chosen_scores: Tensor | None = None
    rejected_scores: Tensor | None = None
    chosen_shared: Tensor | None = None
    rejected_shared: Tensor | None = None
    ref_chosen_shared: Tensor | None = None
    ref_rejected_shared: Tensor | None = None
    chosen_wpo: Tensor | None = None
    rejected_wpo: Tensor | None = None

    def chosen_mean(self) -> Tensor:
        """(B,) mean per-token log-prob of the chosen response under the policy."""
        return self.chosen / self.chosen_lengths.clamp(min=1)

    def rejected_mean(self) -> Tensor:
        """(B,) mean per-token log-prob of the rejected response under the policy."""
        return self.rejected / self.rejected_lengths.clamp(min=1)

    def logratios(self) -> tuple[Tensor, Tensor]:
        """(Δ+, Δ−), each (B,): summed policy minus reference log-probs."""
        if self.ref_chosen is None or self.ref_rejected is None:
            raise ValueError("this loss needs reference log-probs (ref_chosen, ref_rejected)")
        return self.chosen - self.ref_chosen, self.rejected - self.ref_rejected


@dataclass(frozen=True)
class LossOutput:
    """Per-example ``losses`` (B,) and detached ``chosen_rewards``/``rejected_rewards`` (B,)."""

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor


LossFn = Callable[..., LossOutput]


def _rewards(beta: float, chosen: Tensor, rejected: Tensor) -> tuple[Tensor, Tensor]:
    return (beta * chosen).detach(), (beta * rejected).detach()


F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


def ld_sums(inp: PreferenceLogps, ld_alpha: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(c, r, ref_c, ref_r), each (B,): LD-DPO's length-desensitised log-probs (Liu et al. 2024, eq. 9)
    log π̂(y) = Σ_{t ≤ l_p} log π(y_t) + α·Σ_{t > l_p} log π(y_t), l_p = min(|y+|, |y−|), for policy and
    reference alike, written shared + α·(full − shared). α = 1 (TRL's ``ld_alpha=None``): the plain sums."""
    full = (inp.chosen, inp.rejected, inp.ref_chosen, inp.ref_rejected)
    if full[2] is None or full[3] is None:
        raise ValueError("this loss needs reference log-probs (ref_chosen, ref_rejected)")
    if ld_alpha == 1.0:
        return full  # type: ignore[return-value]
    parts = (inp.chosen_shared, inp.rejected_shared, inp.ref_chosen_shared, inp.ref_rejected_shared)
    given = [p for p in parts if p is not None]
    if len(given) != 4:
        raise ValueError("ld_alpha ≠ 1 needs the shared-prefix sums (chosen_shared, ..., ref_rejected_shared)")
    c, r, rc, rr = (sh + ld_alpha * (f - sh) for f, sh in zip(full, given, strict=True))  # type: ignore[operator]
    return c, r, rc, rr


def ld_logratios(inp: PreferenceLogps, ld_alpha: float) -> tuple[Tensor, Tensor]:
    """(Δ+, Δ−), each (B,), from :func:`ld_sums` (the plain log-ratios when ``ld_alpha`` = 1)."""
    c, r, rc, rr = ld_sums(inp, ld_alpha)
    return c - rc, r - rr


def f_scores(logratio: Tensor, f_divergence: str, f_alpha: float) -> Tensor:
    """f-DPO (Wang et al. 2024, "Beyond Reverse KL", Thm. 1): the log-ratio Δ = log u replaced by f'(u),
    u = π/π_ref, as TRL 1.16 writes each f: reverse KL log u; forward KL 1 − 1/u; JS log 2 + log σ(Δ);
    α-divergence (u^(α−1) − 1)/(α−1), log u when |α − 1| < 1e-6, its exponent clamped at 80 (11 in fp16) and
    evaluated in float32 or wider, as TRL does. (B,) -> (B,)."""
    if f_divergence == "reverse_kl":
        return logratio
    if f_divergence == "forward_kl":
        return 1 - torch.exp(-logratio)
    if f_divergence == "js_divergence":
        return math.log(2) + F.logsigmoid(logratio)
    if f_divergence == "alpha_divergence":
        if abs(f_alpha - 1.0) < 1e-6:
            return logratio
        t = (f_alpha - 1.0) * logratio
        wide = torch.promote_types(t.dtype, torch.float32)
        t = t.to(wide).clamp(max=11.0 if t.dtype == torch.float16 else 80.0)
        return (torch.exp(t) - 1.0).to(logratio.dtype) * (1.0 / (f_alpha - 1.0))
    raise ValueError(f"f_divergence must be one of {', '.join(F_DIVERGENCES)}, got {f_divergence!r}")


def trl_scores(
    inp: PreferenceLogps, f_divergence: str = "reverse_kl", f_alpha: float = 0.5, ld_alpha: float = 1.0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(Δ+, Δ−, s+, s−), each (B,): log-ratios (LD-DPO's when ld_alpha ≠ 1) and f-DPO's scores of them."""
    d_pos, d_neg = ld_logratios(inp, ld_alpha)
    return d_pos, d_neg, f_scores(d_pos, f_divergence, f_alpha), f_scores(d_neg, f_divergence, f_alpha)


def wpo_weighted(losses: Tensor, inp: PreferenceLogps, use_weighting: bool) -> Tensor:
    """WPO (Zhou et al. 2024, eq. 2): each pair's loss times w(y+)·w(y−), w(y) = exp(mean_t log p(y_t) −
    log Σ_v p(v)²) of the clean policy, detached (``inp.*_wpo`` hold the logs). (B,) -> (B,)."""
    if not use_weighting:
        return losses
    if inp.chosen_wpo is None or inp.rejected_wpo is None:
        raise ValueError("use_weighting needs the WPO log-weights (chosen_wpo, rejected_wpo)")
    return losses * (torch.exp(inp.chosen_wpo.detach()) * torch.exp(inp.rejected_wpo.detach()))


def dpo(
    inp: PreferenceLogps,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    f_divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
    ld_alpha: float = 1.0,
    use_weighting: bool = False,
) -> LossOutput:
    """DPO (Rafailov et al. 2023, eq. 7; TRL ``sigmoid``): −log σ(β(s+ − s−)), s± = Δ± by default.

    ``label_smoothing`` ε makes it cDPO: −(1−ε) log σ(βδ) − ε log σ(−βδ) (TRL 1.16's ``sigmoid`` has no ε:
    that is ``robust``). s± = f'(π/π_ref) under ``f_divergence`` (:func:`f_scores`), Δ± from LD-DPO's
    log-probs when ``ld_alpha`` < 1 (:func:`ld_logratios`), WPO's pair weights with ``use_weighting``.
    """
    d_pos, d_neg, s_pos, s_neg = trl_scores(inp, f_divergence, f_alpha, ld_alpha)
    logits = beta * (s_pos - s_neg)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return LossOutput(wpo_weighted(losses, inp, use_weighting), *_rewards(beta, d_pos, d_neg))


def hinge(
    inp: PreferenceLogps,
    *,
    beta: float = 0.1,
    f_divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
    ld_alpha: float = 1.0,
    use_weighting: bool = False,
) -> LossOutput:
    """Reference-based hinge (TRL ``hinge``; SLiC, Zhao et al. 2023, eq. 2 without the NLL term):
    max(0, 1 − β(s+ − s−)); options as :func:`dpo`."""
    d_pos, d_neg, s_pos, s_neg = trl_scores(inp, f_divergence, f_alpha, ld_alpha)
    losses = torch.relu(1.0 - beta * (s_pos - s_neg))
    return LossOutput(wpo_weighted(losses, inp, use_weighting), *_rewards(beta, d_pos, d_neg))


def ipo(
    inp: PreferenceLogps,
    *,
    beta: float = 0.1,
    f_divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
    ld_alpha: float = 1.0,
    use_weighting: bool = False,
) -> LossOutput:
    """IPO (Azar et al. 2023, eq. 17): (s+/|y+| − s−/|y−| − 1/(2β))², the scores length-normalised as TRL
    does; options as :func:`dpo`. Rewards are β × the length-normalised log-ratios."""
    _, _, s_pos, s_neg = trl_scores(inp, f_divergence, f_alpha, ld_alpha)
    s_pos = s_pos / inp.chosen_lengths.clamp(min=1)
    s_neg = s_neg / inp.rejected_lengths.clamp(min=1)
    losses = (s_pos - s_neg - 1.0 / (2.0 * beta)) ** 2
    return LossOutput(wpo_weighted(losses, inp, use_weighting), *_rewards(beta, s_pos, s_neg))


def _nll(inp: PreferenceLogps, nll_mode: str) -> Tensor:
    if nll_mode == "sum":
        return -inp.chosen
    if nll_mode == "mean":
        return -inp.chosen_mean()
    raise ValueError(f"nll_mode must be 'sum' or 'mean', got {nll_mode!r}")


def slic(inp: PreferenceLogps, *, margin: float = 1.0, nll_weight: float = 0.1, nll_mode: str = "sum") -> LossOutput:
    """SLiC-HF as in the logits-SAM paper, Table 5 (reference-free).

    max(0, δ_m − logp(y+) + logp(y−)) − λ·logp(y+), δ_m = ``margin``, λ = ``nll_weight``.
    Log-probs are summed over the response (the table's log π(y|x)); ``nll_mode="mean"`` uses the
    token-mean NLL of y+ instead (as some public code does). Rewards are the raw summed log-probs.
    """
    hinge_term = torch.relu(margin - inp.chosen + inp.rejected)
    losses = hinge_term + nll_weight * _nll(inp, nll_mode)
    return LossOutput(losses, *_rewards(1.0, inp.chosen, inp.rejected))


def cpo(inp: PreferenceLogps, *, beta: float = 0.1, nll_weight: float = 1.0, nll_mode: str = "sum") -> LossOutput:
    """CPO as in the logits-SAM paper, Table 5 (reference-free).

    −log σ(β·logp(y+) − β·logp(y−)) − λ·logp(y+), summed log-probs, λ = ``nll_weight`` (1.0 in
    the paper). ``nll_mode="mean"`` uses the token-mean NLL. Rewards are β·logp, as TRL's CPO.
    """
    losses = -F.logsigmoid(beta * (inp.chosen - inp.rejected)) + nll_weight * _nll(inp, nll_mode)
    return LossOutput(losses, *_rewards(beta, inp.chosen, inp.rejected))


def simpo(inp: PreferenceLogps, *, beta: float = 2.0, gamma: float = 1.0) -> LossOutput:
    """SimPO: −log σ(β(mean logp(y+) − mean logp(y−)) − γ) (reference-free, length-normalised)."""
    c, r = inp.chosen_mean(), inp.rejected_mean()
    losses = -F.logsigmoid(beta * (c - r) - gamma)
    return LossOutput(losses, *_rewards(beta, c, r))


def gate_dpo(inp: PreferenceLogps, *, beta: float = 0.1, alpha: float = 10.0, tau: float = 0.1) -> LossOutput:
    """Gate-DPO (seed paper 002): DPO's value with the rejected gradient gated.

    g = σ(α(p − τ)) with p = exp(mean token log-prob of y− under π_θ), g detached. The rejected
    log-ratio enters as Δ−' = g·Δ− + (1−g)·stopgrad(Δ−): the loss value equals DPO's, and the
    gradient reaching logp_θ(y−) is DPO's times g, so updates that push an already unlikely
    rejected response further down are attenuated. α, τ are our defaults (the paper's are not
    published).
    """
    d_pos, d_neg = inp.logratios()
    gate = torch.sigmoid(alpha * (inp.rejected_mean().detach().exp() - tau))
    d_neg_gated = gate * d_neg + (1.0 - gate) * d_neg.detach()
    losses = -F.logsigmoid(beta * (d_pos - d_neg_gated))
    return LossOutput(losses, *_rewards(beta, d_pos, d_neg))


def dpo_abs(inp: PreferenceLogps, *, beta: float = 0.1, lam: float = 0.1) -> LossOutput:
    """DPO + absolute-improvement penalty; our *reconstruction* of seed paper 003 ("SPO, bilevel").

    −log σ(βδ) + λ·max(0, logp_ref(y+) − logp_θ(y+)): any fall of the chosen likelihood below the
    reference is penalised. The paper's exact equations were not available to us.
    """
    d_pos, d_neg = inp.logratios()
    losses = -F.logsigmoid(beta * (d_pos - d_neg)) + lam * torch.relu(-d_pos)
    return LossOutput(losses, *_rewards(beta, d_pos, d_neg))


def dpop(inp: PreferenceLogps, *, beta: float = 0.1, lam: float = 50.0) -> LossOutput:
    """DPO-Positive (Pal et al. 2024, "Smaug", eq. 3): the penalty sits *inside* the sigmoid.

    −log σ(β·(Δ+ − Δ− − λ·max(0, logp_ref(y+) − logp_θ(y+)))), log-probs summed over response tokens.
    It is DPO while the chosen response stays above the reference; once it falls below, the
    fall is paid λ times in the margin, which is the published fix for likelihood displacement on
    small-edit pairs. λ = 50 is the paper's value for its MetaMath/ARC runs. Rewards are β·Δ± (TRL's).
    """
    d_pos, d_neg = inp.logratios()
    losses = -F.logsigmoid(beta * (d_pos - d_neg - lam * torch.relu(-d_pos)))
    return LossOutput(losses, *_rewards(beta, d_pos, d_neg))


def spo_target(inp: PreferenceLogps, *, beta: float = 0.1, target: float = 1.0, score_scale: float = 1.0) -> LossOutput:
    """Finite-target loss; our *reconstruction* of seed paper 004 ("SPO, finite target").

    Drives u = βδ to a finite target m instead of +∞:  ℓ = 2·log cosh((u − m)/2)
    = softplus(u − m) + softplus(m − u) − 2 log 2. Its derivative in u is tanh((u − m)/2), bounded
    by 1 in magnitude and zero at the target, so the push on logp(y−) stops once the margin is
    reached (DPO's never does). m = ``score_scale``·(score(y+) − score(y−)) when the data carries
    scores (the RLHF optimum βδ* = r(y+) − r(y−)), else the constant ``target``.
    """
    d_pos, d_neg = inp.logratios()
    u = beta * (d_pos - d_neg)
    if inp.chosen_scores is not None and inp.rejected_scores is not None:
        m = score_scale * (inp.chosen_scores - inp.rejected_scores).to(u.dtype)
    else:
        m = torch.full_like(u, target)
    x = u - m
    losses = F.softplus(x) + F.softplus(-x) - 2.0 * torch.log(torch.tensor(2.0, dtype=u.dtype))
    return LossOutput(losses, *_rewards(beta, d_pos, d_neg))


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 − exp(x)) for x ≤ 0, stable on both sides of −ln 2 (Mächler 2012).

    Each branch sees an input clamped to its own side, so the branch torch.where discards has a finite
    gradient too (else 0 · inf = NaN in backward); x is capped at −tiny so x = 0 gives a finite value.
    """
    x = x.clamp(max=-torch.finfo(x.dtype).tiny)
    cut = -0.6931471805599453
    far = torch.log1p(-torch.exp(x.clamp(max=cut)))
    near = torch.log(-torch.expm1(x.clamp(min=cut)))
    return torch.where(x < cut, far, near)


def orpo(inp: PreferenceLogps, *, beta: float = 0.1) -> LossOutput:
    """ORPO (Hong et al. 2024; reference-free): −mean logp(y+) − β·log σ(log odds(y+) − log odds(y−)).

    odds(y) = P/(1 − P) with P = exp(mean token log-prob), so the log odds ratio is
    (c̄ − r̄) − (log(1 − e^c̄) − log(1 − e^r̄)). The NLL term is the chosen response's token-mean NLL
    per pair (the paper's L_SFT); TRL's ORPOTrainer averages it over all chosen tokens of the batch
    instead, which is the same when the chosen responses have equal lengths. A response of
    probability 1 (odds ∞) gives a finite loss and gradient (see :func:`_log1mexp`). Rewards are
    β·mean logp, as TRL's.
    """
    c, r = inp.chosen_mean(), inp.rejected_mean()
    log_odds = (c - r) - (_log1mexp(c) - _log1mexp(r))
    losses = -inp.chosen_mean() - beta * F.logsigmoid(log_odds)
    return LossOutput(losses, *_rewards(beta, c, r))
