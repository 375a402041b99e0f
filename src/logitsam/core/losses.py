"""Preference losses as pure functions of per-sequence log-probs, and their registry.

Every loss takes a :class:`PreferenceLogps` (policy and, where needed, reference log-probs of the
chosen and rejected responses, summed over response tokens, plus response lengths) and keyword
hyperparameters, and returns a :class:`LossOutput` with per-example losses and rewards.

The registry ``LOSSES`` maps a name to a :class:`LossSpec` that tells callers everything they need
(reference model or not, which log-prob normalisation the loss works on, default hyperparameters),
so no caller matches on loss names.

Notation (docs/design.md §3): Δ± = logp_θ(y±) − logp_ref(y±), δ = Δ+ − Δ−, β the temperature.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from logitsam.core.hparams import Range, check_like_default, nonnegative, one_of, positive


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


@dataclass(frozen=True)
class LossSpec:
    """What a caller needs to know about a loss, so nobody matches on names.

    needs_reference: the trainer must supply ``ref_chosen``/``ref_rejected``.
    length_normalized: the preference term works on mean per-token log-probs (rewards are then
        β·mean log-prob) rather than sums; callers always pass sums and lengths.
    defaults: hyperparameters and their default values; any other keyword is an error.
    ranges: the valid values of each hyperparameter (a key without one only has to be a finite
        number / a value of its default's type); :func:`resolve_hparams` enforces them.
    """

    name: str
    fn: LossFn
    needs_reference: bool
    length_normalized: bool
    defaults: Mapping[str, Any] = field(default_factory=dict)
    summary: str = ""
    ranges: Mapping[str, Range] = field(default_factory=dict)


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


def _spec(
    name: str, fn: LossFn, ref: bool, norm: bool, summary: str, ranges: dict[str, Range]
) -> LossSpec:

    defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.kind == p.KEYWORD_ONLY}
    if set(ranges) != set(defaults):  # a registry entry must declare the range of every hyperparameter
        raise AssertionError(f"loss {name!r}: ranges for {sorted(ranges)} but hyperparameters {sorted(defaults)}")
    return LossSpec(name, fn, ref, norm, defaults, summary, ranges)


# Why each range: β is a temperature on a log-ratio, so β < 0 trains toward the rejected response and
# β = 0 learns nothing; weights and margins below zero invert the term they scale.
_BETA = positive("β < 0 trains toward the rejected response, β = 0 learns nothing")
_NLL_MODE = one_of("sum", "mean", why="summed or token-mean NLL of the chosen response")
_NLL_WEIGHT = nonnegative("λ < 0 pushes the chosen response's likelihood down")

LOSSES: dict[str, LossSpec] = {
    s.name: s
    for s in (
        _spec(
            "dpo",
            dpo,
            True,
            False,
            "DPO / cDPO (label_smoothing)",
            {
                "beta": _BETA,
                "label_smoothing": Range(
                    0.0, 0.5, high_open=True, why="ε is the assumed label-flip rate; ε ≥ 0.5 prefers rejected"
                ),
            },
        ),
        _spec("hinge", hinge, True, False, "reference-based hinge (TRL 'hinge')", {"beta": _BETA}),
        _spec("ipo", ipo, True, True, "IPO, length-normalised log-ratios", {"beta": _BETA}),
        _spec(
            "slic",
            slic,
            False,
            False,
            "SLiC-HF (paper Table 5)",
            {
                "margin": nonnegative("a negative margin is met while the rejected response is more likely"),
                "nll_weight": _NLL_WEIGHT,
                "nll_mode": _NLL_MODE,
            },
        ),
        _spec(
            "cpo",
            cpo,
            False,
            False,
            "CPO (paper Table 5)",
            {"beta": _BETA, "nll_weight": _NLL_WEIGHT, "nll_mode": _NLL_MODE},
        ),
        _spec(
            "simpo",
            simpo,
            False,
            True,
            "SimPO",
            {"beta": _BETA, "gamma": nonnegative("γ is SimPO's target reward margin")},
        ),
        _spec(
            "gate_dpo",
            gate_dpo,
            True,
            False,
            "Gate-DPO: gated rejected gradient",
            {
                "beta": _BETA,
                "alpha": positive("α is the gate's steepness; α ≤ 0 removes or inverts the gate"),
                "tau": Range(0.0, 1.0, why="τ is a threshold on a probability"),
            },
        ),
        _spec(
            "dpo_abs",
            dpo_abs,
            True,
            False,
            "DPO + absolute-improvement penalty (reconstruction)",
            {"beta": _BETA, "lam": nonnegative("λ < 0 rewards the chosen response falling below the reference")},
        ),
        _spec(
            "spo_target",
            spo_target,
            True,
            False,
            "finite-target loss (reconstruction)",
            {
                "beta": _BETA,
                "target": nonnegative("the target margin βδ; < 0 targets preferring the rejected response"),
                "score_scale": positive("maps score gaps to margins; ≤ 0 removes or flips the preference"),
            },
        ),
    )
}


class HyperparameterError(ValueError):
    """A hyperparameter is unknown, of the wrong type, NaN/inf or out of range; names the loss and key."""

    def __init__(self, loss: str, key: str, problem: str) -> None:
        super().__init__(f"loss {loss!r}: {problem}")
        self.loss, self.key, self.problem = loss, key, problem


def get_loss(name: str) -> LossSpec:
    """Look a loss up by name; an unknown name raises ValueError listing the known ones."""
    if not isinstance(name, str) or name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def resolve_hparams(spec: LossSpec, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults of ``spec`` updated with ``overrides``, every value checked against its range.

    Raises :class:`HyperparameterError` (a ValueError) naming the loss and the key for an unknown
    key, a wrong type, NaN/inf or a value outside the declared range.
    """
    params = dict(spec.defaults)
    for key, value in (overrides or {}).items():
        if key not in params:
            known = ", ".join(sorted(params)) or "none"
            raise HyperparameterError(spec.name, str(key), f"no hyperparameter {key!r} (known: {known})")
        params[key] = value
    for key, value in params.items():
        rng = spec.ranges.get(key)
        try:
            params[key] = rng.check(value) if rng is not None else check_like_default(value, spec.defaults[key])
        except ValueError as e:
            raise HyperparameterError(spec.name, key, f"{key} = {value!r}: {e}") from None
    return params


class LossParamRow(NamedTuple):
    """One row of :func:`describe_losses`."""

    loss: str
    hparam: str
    default: Any
    range: str
    why: str
    summary: str


def describe_losses() -> list[LossParamRow]:
    """Every registered loss's hyperparameters with default and valid range (for ``logitsam losses``)."""
    rows = []
    for name in sorted(LOSSES):
        spec = LOSSES[name]
        kind = ("reference" if spec.needs_reference else "reference-free") + (
            ", length-normalised" if spec.length_normalized else ", summed log-probs"
        )
        summary = f"{spec.summary} [{kind}]"
        for key, default in spec.defaults.items():
            rng = spec.ranges.get(key)
            text, why = (rng.describe(), rng.why) if rng is not None else ("any", "")
            rows.append(LossParamRow(name, key, default, text, why, summary))
        if not spec.defaults:
            rows.append(LossParamRow(name, "", None, "", "", summary))
    return rows


def compute_loss(name: str, inp: PreferenceLogps, **hparams: Any) -> LossOutput:
    """Evaluate the registered loss ``name`` on ``inp`` with validated hyperparameters."""
    spec = get_loss(name)
    return spec.fn(inp, **resolve_hparams(spec, hparams))
