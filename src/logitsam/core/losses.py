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
    """

    chosen: Tensor
    rejected: Tensor
    chosen_lengths: Tensor
    rejected_lengths: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    chosen_scores: Tensor | None = None
    rejected_scores: Tensor | None = None

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


def dpo(inp: PreferenceLogps, *, beta: float = 0.1, label_smoothing: float = 0.0) -> LossOutput:
    """DPO: −log σ(βδ); with ``label_smoothing`` ε it is cDPO: −(1−ε) log σ(βδ) − ε log σ(−βδ)."""
    d_pos, d_neg = inp.logratios()
    logits = beta * (d_pos - d_neg)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return LossOutput(losses, *_rewards(beta, d_pos, d_neg))


def hinge(inp: PreferenceLogps, *, beta: float = 0.1) -> LossOutput:
    """Reference-based hinge (TRL ``hinge``, SLiC without the NLL term): max(0, 1 − βδ)."""
    d_pos, d_neg = inp.logratios()
    losses = torch.relu(1.0 - beta * (d_pos - d_neg))
    return LossOutput(losses, *_rewards(beta, d_pos, d_neg))


def ipo(inp: PreferenceLogps, *, beta: float = 0.1) -> LossOutput:
    """IPO: (δ' − 1/(2β))², δ' built from length-normalised log-ratios as TRL does."""
    d_pos, d_neg = inp.logratios()
    d_pos = d_pos / inp.chosen_lengths.clamp(min=1)
    d_neg = d_neg / inp.rejected_lengths.clamp(min=1)
    losses = (d_pos - d_neg - 1.0 / (2.0 * beta)) ** 2
    return LossOutput(losses, *_rewards(beta, d_pos, d_neg))


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
