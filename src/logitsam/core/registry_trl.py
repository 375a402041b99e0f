"""The registry's table of TRL 1.16's DPO loss types (core/losses_trl.py) and the ranges of TRL's options.

registry.py builds these specs beside its own; here are only their declarations: name, function,
reference or not, length-normalised or not, a summary and a :class:`~logitsam.core.hparams.Range` for every
hyperparameter, each with the reason values outside it are refused.
"""

from __future__ import annotations

from logitsam.core import losses_trl as T
from logitsam.core.hparams import Range, one_of, positive, switch
from logitsam.core.losses import F_DIVERGENCES

BETA = positive("β < 0 trains toward the rejected response, β = 0 learns nothing")
# TRL's options, shared by every loss type TRL applies them to
F_DIVERGENCE = one_of(*F_DIVERGENCES, why="f-DPO's divergence (TRL f_divergence_type)")
F_ALPHA = Range(why="the α-divergence's α (TRL f_alpha_divergence_coef); |α − 1| < 1e-6 is reverse KL")
LD_ALPHA = Range(0.0, 1.0, why="LD-DPO's weight of the tokens past the shorter response (1: plain DPO)")
WEIGHTING = switch("WPO's pair weights from the policy's own token probabilities (TRL use_weighting)")
OPTIONS = {"f_divergence": F_DIVERGENCE, "f_alpha": F_ALPHA, "ld_alpha": LD_ALPHA, "use_weighting": WEIGHTING}
NO_F = {"ld_alpha": LD_ALPHA, "use_weighting": WEIGHTING}  # TRL refuses f_divergence for these types
SMOOTH_FLIP = Range(0.0, 0.5, high_open=True, why="ε is a label-flip rate; ε ≥ 0.5 prefers the rejected response")

# (name, fn, needs reference, length-normalised, summary, ranges)
TRL_LOSSES = (
    ("sigmoid_norm", T.sigmoid_norm, True, True, "DPO on length-normalised scores (TRL 'sigmoid_norm')",
     {"beta": BETA, **OPTIONS}),
    ("exo_pair", T.exo_pair, True, False, "EXO-pref, K = 2 (TRL 'exo_pair')",
     {"beta": BETA, "label_smoothing": Range(0.0, 1.0, low_open=True, high_open=True,
                                             why="EXO's ε enters as log ε and log(1 − ε)"), **OPTIONS}),
    ("nca_pair", T.nca_pair, True, False, "NCA, paired (TRL 'nca_pair')", {"beta": BETA, **NO_F}),
    ("robust", T.robust, True, False, "Robust DPO under label flips (TRL 'robust')",
     {"beta": BETA, "label_smoothing": SMOOTH_FLIP, **OPTIONS}),
    ("bco_pair", T.bco_pair, True, False, "BCO, paired (TRL 'bco_pair')", {"beta": BETA, **NO_F}),
    ("sppo_hard", T.sppo_hard, True, False, "SPPO, hard probabilities (TRL 'sppo_hard')", {"beta": BETA, **NO_F}),
    ("aot", T.aot, True, False, "AOT, paired: margins sorted across the batch (TRL 'aot')",
     {"beta": BETA, "label_smoothing": SMOOTH_FLIP, "ld_alpha": LD_ALPHA}),
    ("aot_unpaired", T.aot_unpaired, True, False, "AOT, unpaired: log-ratios sorted across the batch (TRL "
     "'aot_unpaired')", {"beta": BETA, "label_smoothing": SMOOTH_FLIP, "ld_alpha": LD_ALPHA}),
    ("apo_zero", T.apo_zero, True, False, "APO-zero (TRL 'apo_zero')", {"beta": BETA, **NO_F}),
    ("apo_down", T.apo_down, True, False, "APO-down (TRL 'apo_down')", {"beta": BETA, **NO_F}),
    ("discopop", T.discopop, True, False, "DiscoPOP (TRL 'discopop')",
     {"beta": BETA, "discopop_tau": positive("τ is a temperature: τ ≤ 0 flips or breaks the blend"), **OPTIONS}),
    ("sft", T.sft, False, False, "chosen NLL, the batch's token mean (TRL 'sft'; RPO, MPO)",
     {"use_weighting": WEIGHTING}),
)  # fmt: skip

# TRL loss_type -> registered name (the rest are registered under TRL's own names)
TRL_NAMES = {"sigmoid": "dpo", "hinge": "hinge", "ipo": "ipo"} | {row[0]: row[0] for row in TRL_LOSSES}
