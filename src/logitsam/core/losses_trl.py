"""TRL 1.16's DPO loss types that logitsam's core losses (dpo = ``sigmoid``, hinge, ipo) do not cover.

Each is a pure function of :class:`~logitsam.core.losses.PreferenceLogps` with keyword hyperparameters,
returning (B,) per-pair losses whose mean is the batch loss, exactly as TRL's ``DPOTrainer`` reduces
them (``per_sequence_loss.mean()``). The options TRL applies around every loss type are shared helpers
of core/losses.py: ``f_divergence``/``f_alpha`` (f-DPO scores, only where TRL allows them), ``ld_alpha``
(LD-DPO's log-probs) and ``use_weighting`` (WPO's pair weights, not for the sorting ``aot`` losses, as
TRL). Rewards are β·Δ± (TRL's ``rewards/*``). Notation: docs/design.md §3; s± the f-DPO scores (= Δ± for
reverse KL), δ_s = s+ − s−.

Three couple the pairs of a batch (the registry's probe finds it; the fused head then takes dL/dsums
from the whole batch): ``aot`` and ``aot_unpaired`` sort across the batch, ``sft`` is one token mean
over all the batch's chosen tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from logitsam.core.losses import LossOutput, PreferenceLogps, _rewards, ld_logratios, ld_sums, trl_scores, wpo_weighted


def _out(losses: Tensor, inp: PreferenceLogps, use_weighting: bool, beta: float, d_pos: Tensor, d_neg: Tensor):
    return LossOutput(wpo_weighted(losses, inp, use_weighting), *_rewards(beta, d_pos, d_neg))


def sigmoid_norm(
    inp: PreferenceLogps,
    *,
    beta: float = 0.1,
    f_divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
    ld_alpha: float = 1.0,
    use_weighting: bool = False,
) -> LossOutput:
    """Length-normalised DPO (TRL ``sigmoid_norm``): −log σ(β(s+/|y+| − s−/|y−|))."""
    d_pos, d_neg, s_pos, s_neg = trl_scores(inp, f_divergence, f_alpha, ld_alpha)
    delta = s_pos / inp.chosen_lengths.clamp(min=1) - s_neg / inp.rejected_lengths.clamp(min=1)
    return _out(-F.logsigmoid(beta * delta), inp, use_weighting, beta, d_pos, d_neg)


def exo_pair(
    inp: PreferenceLogps,
    *,
    beta: float = 0.1,
    label_smoothing: float = 1e-3,
    f_divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
    ld_alpha: float = 1.0,
    use_weighting: bool = False,
) -> LossOutput:
    """EXO-pref (Ji et al. 2024, eq. 16), K = 2: KL(q ‖ p) with q = (σ(βδ_s), σ(−βδ_s)) and p = (1 − ε, ε),
    ε = ``label_smoothing`` (the paper: 1e-3):  σ(βδ_s)(log σ(βδ_s) − log(1−ε)) + σ(−βδ_s)(log σ(−βδ_s) − log ε)."""
    d_pos, d_neg, s_pos, s_neg = trl_scores(inp, f_divergence, f_alpha, ld_alpha)
    u = beta * (s_pos - s_neg)
    eps = torch.tensor(label_smoothing, dtype=u.dtype, device=u.device)
    losses = torch.sigmoid(u) * (F.logsigmoid(u) - torch.log1p(-eps)) + torch.sigmoid(-u) * (
        F.logsigmoid(-u) - torch.log(eps)
    )
    return _out(losses, inp, use_weighting, beta, d_pos, d_neg)


def nca_pair(inp: PreferenceLogps, *, beta: float = 0.1, ld_alpha: float = 1.0, use_weighting: bool = False):
    """NCA (Chen et al. 2024, "Noise Contrastive Alignment", eq. 11), paired:
    −log σ(βΔ+) − ½ log σ(−βΔ+) − ½ log σ(−βΔ−)."""
    d_pos, d_neg = ld_logratios(inp, ld_alpha)
    rc, rr = beta * d_pos, beta * d_neg
    losses = -F.logsigmoid(rc) - 0.5 * F.logsigmoid(-rc) - 0.5 * F.logsigmoid(-rr)
    return _out(losses, inp, use_weighting, beta, d_pos, d_neg)


def robust(
    inp: PreferenceLogps,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    f_divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
    ld_alpha: float = 1.0,
    use_weighting: bool = False,
) -> LossOutput:
    """Robust DPO (Chowdhury et al. 2024, eq. 8), ε = ``label_smoothing`` the label-flip rate:
    ((1−ε)(−log σ(βδ_s)) − ε(−log σ(−βδ_s))) / (1 − 2ε), unbiased under flipped labels."""
    d_pos, d_neg, s_pos, s_neg = trl_scores(inp, f_divergence, f_alpha, ld_alpha)
    u, e = beta * (s_pos - s_neg), label_smoothing
    losses = (-(1 - e) * F.logsigmoid(u) + e * F.logsigmoid(-u)) / (1 - 2 * e)
    return _out(losses, inp, use_weighting, beta, d_pos, d_neg)


def bco_pair(inp: PreferenceLogps, *, beta: float = 0.1, ld_alpha: float = 1.0, use_weighting: bool = False):
    """BCO, paired as TRL (Jung et al. 2024, eq. 6 without the reward shift δ): −log σ(βΔ+) − log σ(−βΔ−)."""
    d_pos, d_neg = ld_logratios(inp, ld_alpha)
    losses = -F.logsigmoid(beta * d_pos) - F.logsigmoid(-beta * d_neg)
    return _out(losses, inp, use_weighting, beta, d_pos, d_neg)


def sppo_hard(inp: PreferenceLogps, *, beta: float = 0.1, ld_alpha: float = 1.0, use_weighting: bool = False):
    """SPPO with hard win probabilities (Wu et al. 2024, eq. 4.7 with P = 1 / 0; TRL ``sppo_hard``):
    (Δ+ − 1/(2β))² + (Δ− + 1/(2β))²."""
    d_pos, d_neg = ld_logratios(inp, ld_alpha)
    losses = (d_pos - 0.5 / beta) ** 2 + (d_neg + 0.5 / beta) ** 2
    return _out(losses, inp, use_weighting, beta, d_pos, d_neg)


def _smoothed(u: Tensor, label_smoothing: float) -> Tensor:
    return -F.logsigmoid(u) * (1 - label_smoothing) - F.logsigmoid(-u) * label_smoothing


def aot(inp: PreferenceLogps, *, beta: float = 0.1, label_smoothing: float = 0.0, ld_alpha: float = 1.0):
    """AOT, paired (Melnyk et al. 2024, "Distributional Preference Alignment", eq. 9 with the logistic
    loss): the policy's and the reference's chosen−rejected log-ratios each sorted over the batch, then
    −(1−ε) log σ(βu_(i)) − ε log σ(−βu_(i)), u_(i) = sort(logp(y+) − logp(y−))_i − sort(ref's)_i.
    Couples the batch's pairs."""
    c, r, rc, rr = ld_sums(inp, ld_alpha)
    u = torch.sort(c - r, dim=0).values - torch.sort(rc - rr, dim=0).values
    d_pos, d_neg = c - rc, r - rr
    return LossOutput(_smoothed(beta * u, label_smoothing), *_rewards(beta, d_pos, d_neg))


def aot_unpaired(inp: PreferenceLogps, *, beta: float = 0.1, label_smoothing: float = 0.0, ld_alpha: float = 1.0):
    """AOT, unpaired (Melnyk et al. 2024, eq. 8): sort(Δ+)_i − sort(Δ−)_i over the batch, then AOT's smoothed
    logistic loss. Couples the batch's pairs."""
    d_pos, d_neg = ld_logratios(inp, ld_alpha)
    u = torch.sort(d_pos, dim=0).values - torch.sort(d_neg, dim=0).values
    return LossOutput(_smoothed(beta * u, label_smoothing), *_rewards(beta, d_pos, d_neg))


def apo_zero(inp: PreferenceLogps, *, beta: float = 0.1, ld_alpha: float = 1.0, use_weighting: bool = False):
    """APO-zero (D'Oosterlinck et al. 2024, eq. 7): (1 − σ(βΔ+)) + σ(βΔ−): raise the chosen, lower the rejected."""
    d_pos, d_neg = ld_logratios(inp, ld_alpha)
    losses = 1 - torch.sigmoid(beta * d_pos) + torch.sigmoid(beta * d_neg)
    return _out(losses, inp, use_weighting, beta, d_pos, d_neg)


def apo_down(inp: PreferenceLogps, *, beta: float = 0.1, ld_alpha: float = 1.0, use_weighting: bool = False):
    """APO-down (D'Oosterlinck et al. 2024, eq. 8): σ(βΔ+) + (1 − σ(β(Δ+ − Δ−))): lower both, the rejected more."""
    d_pos, d_neg = ld_logratios(inp, ld_alpha)
    losses = torch.sigmoid(beta * d_pos) + 1 - torch.sigmoid(beta * (d_pos - d_neg))
    return _out(losses, inp, use_weighting, beta, d_pos, d_neg)


def discopop(
    inp: PreferenceLogps,
    *,
    beta: float = 0.1,
    discopop_tau: float = 0.05,
    f_divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
    ld_alpha: float = 1.0,
    use_weighting: bool = False,
) -> LossOutput:
    """DiscoPOP / LRML (Chris Lu et al. 2024, eq. 5), ρ = βδ_s, τ = ``discopop_tau``:
    (1 − σ(ρ/τ))·(−log σ(ρ)) + σ(ρ/τ)·e^(−ρ) (finite for every ρ when τ < 1)."""
    d_pos, d_neg, s_pos, s_neg = trl_scores(inp, f_divergence, f_alpha, ld_alpha)
    u = beta * (s_pos - s_neg)
    # σ(ρ/τ)·e^(−ρ) as exp(−ρ + log σ(ρ/τ)), (1 − σ(ρ/τ)) as σ(−ρ/τ): finite far below 0 (τ < 1), where
    # TRL's product is ∞ · 0 = NaN; the same value elsewhere
    losses = -F.logsigmoid(u) * torch.sigmoid(-u / discopop_tau) + torch.exp(F.logsigmoid(u / discopop_tau) - u)
    return _out(losses, inp, use_weighting, beta, d_pos, d_neg)


def sft(inp: PreferenceLogps, *, use_weighting: bool = False) -> LossOutput:
    """TRL's ``sft`` term (RPO, Pang et al. 2024, eq. 3; MPO's NLL): the mean NLL over all the batch's chosen
    tokens, −Σ_i logp(y+_i) / Σ_i |y+_i|, the same for every pair (reference-free; couples the batch's pairs;
    rejected unused). With ``use_weighting`` each pair's copy is times its WPO weight, as TRL. Rewards are
    the summed chosen / rejected log-probs."""
    value = -inp.chosen.sum() / inp.chosen_lengths.sum().clamp(min=1)
    losses = value.expand(inp.chosen.shape[0])
    return LossOutput(wpo_weighted(losses, inp, use_weighting), inp.chosen.detach(), inp.rejected.detach())
