"""TRL 1.16's DPO loss types and options in the registry: hand-derived values, the registry's flags and
ranges, and parity with TRL's own ``DPOTrainer._compute_loss`` on random per-token log-probs (float64, loss
and every gradient within 1e-6, TRL's reductions: tests/trl_reference.py)."""

import math

import pytest
import torch

from logitsam.core.combined import combine_losses, extra_inputs
from logitsam.core.extras import shared_labels
from logitsam.core.losses import PreferenceLogps
from logitsam.core.registry import LOSSES, HyperparameterError, compute_loss, get_loss, resolve_hparams
from logitsam.core.registry_trl import TRL_NAMES

trl = pytest.importorskip("trl")
from trl_reference import our_loss, random_batch, trl_loss  # noqa: E402

D = torch.float64
ls = lambda x: math.log1p(math.exp(-x))  # noqa: E731 — −log σ(x)
sg = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731


def pairs(c, r, rc, rr, lc, lr, **extra):
    t = lambda v: torch.tensor([float(x) for x in v], dtype=D)  # noqa: E731
    return PreferenceLogps(t(c), t(r), torch.tensor(lc), torch.tensor(lr), t(rc), t(rr),
                           **{k: t(v) for k, v in extra.items()})  # fmt: skip


# Pair A: Δ+ = 1, Δ− = −1 (βΔ± = ±0.1, βδ = 0.2 at β = 0.1); 5 and 4 response tokens.
A = pairs([-10], [-12], [-11], [-11], [5], [4])
# A and B (Δ+ = −2, Δ− = −0.5; policy margin −0.5, reference margin 1), for the losses that sort the batch.
AB = pairs([-10, -20], [-12, -19.5], [-11, -18], [-11, -19], [5, 10], [4, 10])
# A with shared parts (the rejected is the shorter: its shared part is all of it) and WPO log-weights.
A_EXTRA = pairs([-10], [-12], [-11], [-11], [5], [4], chosen_shared=[-8], rejected_shared=[-12],
                ref_chosen_shared=[-10], ref_rejected_shared=[-11], chosen_wpo=[-0.5], rejected_wpo=[-1.0])  # fmt: skip

HAND = [
    ("sigmoid_norm", A, {}, [ls(0.1 * (1 / 5 + 1 / 4))]),
    (
        "exo_pair",
        A,
        {},
        [sg(0.2) * (math.log(sg(0.2)) - math.log(0.999)) + sg(-0.2) * (math.log(sg(-0.2)) - math.log(1e-3))],
    ),
    ("nca_pair", A, {}, [ls(0.1) + 0.5 * ls(-0.1) + 0.5 * ls(0.1)]),
    ("robust", A, {"label_smoothing": 0.1}, [(0.9 * ls(0.2) - 0.1 * ls(-0.2)) / 0.8]),
    ("robust", A, {}, [ls(0.2)]),  # ε = 0: DPO
    ("bco_pair", A, {}, [2 * ls(0.1)]),
    ("sppo_hard", A, {}, [(1 - 5) ** 2 + (-1 + 5) ** 2]),
    ("apo_zero", A, {}, [2 * sg(-0.1)]),
    ("apo_down", A, {}, [sg(0.1) + 1 - sg(0.2)]),
    ("discopop", A, {}, [ls(0.2) * (1 - sg(4.0)) + math.exp(-0.2) * sg(4.0)]),
    # sorted policy margins (−0.5, 2) minus sorted reference margins (0, 1): u = (−0.5, 1)
    ("aot", AB, {}, [ls(-0.05), ls(0.1)]),
    ("aot", AB, {"label_smoothing": 0.2}, [0.8 * ls(-0.05) + 0.2 * ls(0.05), 0.8 * ls(0.1) + 0.2 * ls(-0.1)]),
    # sorted Δ+ (−2, 1) minus sorted Δ− (−1, −0.5): u = (−1, 1.5)
    ("aot_unpaired", AB, {}, [ls(-0.1), ls(0.15)]),
    ("sft", AB, {}, [2.0, 2.0]),  # (10 + 20) / (5 + 10) chosen tokens, the same for every pair
    # options: JS scores differ by logσ(1) − logσ(−1) = 1; forward KL by e − 1/e; α = 0.5 by 4 sinh(0.5)
    ("dpo", A, {"f_divergence": "js_divergence"}, [ls(0.1)]),
    ("dpo", A, {"f_divergence": "forward_kl"}, [ls(0.1 * (math.e - 1 / math.e))]),
    ("dpo", A, {"f_divergence": "alpha_divergence", "f_alpha": 0.5}, [ls(0.4 * math.sinh(0.5))]),
    ("hinge", A, {"f_divergence": "alpha_divergence", "f_alpha": 1.0}, [0.8]),  # α = 1: reverse KL
    # LD-DPO α = 0.5: chosen −8 + 0.5·(−2) = −9, its reference −10 + 0.5·(−1) = −10.5: Δ+ = 1.5, Δ− = −1
    ("dpo", A_EXTRA, {"ld_alpha": 0.5}, [ls(0.25)]),
    ("dpo", A_EXTRA, {"ld_alpha": 1.0}, [ls(0.2)]),  # α = 1: the shared parts are not read
    ("ipo", A_EXTRA, {"ld_alpha": 0.0}, [(2 / 5 + 1 / 4 - 5) ** 2]),  # α = 0: the chosen's tail dropped: Δ+ = 2
    # WPO: weight e^(−0.5)·e^(−1)
    ("dpo", A_EXTRA, {"use_weighting": True}, [math.exp(-1.5) * ls(0.2)]),
    ("sft", A_EXTRA, {"use_weighting": True}, [math.exp(-1.5) * 2.0]),
]


@pytest.mark.parametrize(("name", "inp", "hp", "want"), HAND, ids=[f"{h[0]}-{i}" for i, h in enumerate(HAND)])
def test_hand_values(name, inp, hp, want):
    got = compute_loss(name, inp, **hp).losses
    assert got.tolist() == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_every_trl_loss_type_is_registered_and_the_flags_are_what_the_losses_do():
    assert {h[0] for h in HAND} >= set(TRL_NAMES.values()) - {"dpo", "hinge", "ipo"}  # those three: test_losses
    assert set(TRL_NAMES) == {"sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
                              "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"}  # fmt: skip
    assert all(name in LOSSES for name in TRL_NAMES.values())
    coupled = {n for n in TRL_NAMES.values() if get_loss(n).batch_coupled}
    assert coupled == {"aot", "aot_unpaired", "sft"}
    assert get_loss("sft").uses == ("chosen",) and not get_loss("sft").needs_reference
    assert all(get_loss(n).needs_reference for n in TRL_NAMES.values() if n != "sft")


@pytest.mark.parametrize(
    ("name", "hp", "key"),
    [
        ("exo_pair", {"label_smoothing": 0.0}, "label_smoothing"),  # log ε
        ("robust", {"label_smoothing": 0.5}, "label_smoothing"),  # divides by 1 − 2ε
        ("dpo", {"ld_alpha": 1.5}, "ld_alpha"),
        ("dpo", {"f_divergence": "kl"}, "f_divergence"),
        ("dpo", {"use_weighting": 1}, "use_weighting"),  # a switch is true or false, not 1
        ("discopop", {"discopop_tau": 0.0}, "discopop_tau"),
        ("nca_pair", {"f_divergence": "js_divergence"}, "f_divergence"),  # TRL refuses f-DPO for nca_pair
        ("aot", {"use_weighting": True}, "use_weighting"),  # TRL: sorting misaligns the pair weights
    ],
)
def test_out_of_range_options_are_refused(name, hp, key):
    with pytest.raises(HyperparameterError) as e:
        resolve_hparams(get_loss(name), hp)
    assert e.value.key == key


def test_options_ask_for_their_inputs_and_fail_loudly_without_them():
    assert extra_inputs(get_loss("dpo"), resolve_hparams(get_loss("dpo"), {})) == frozenset()
    assert extra_inputs(get_loss("dpo"), {"ld_alpha": 0.5, "use_weighting": True}) == {"shared", "wpo"}
    mpo = combine_losses([("dpo", 0.8, {"ld_alpha": 0.5}), ("sft", 1.0, {"use_weighting": True})])
    assert extra_inputs(mpo, {}) == {"shared", "wpo"}
    with pytest.raises(ValueError, match="shared"):
        compute_loss("dpo", A, ld_alpha=0.5)
    with pytest.raises(ValueError, match="wpo"):
        compute_loss("bco_pair", A, use_weighting=True)


def test_shared_labels_keep_each_pairs_first_min_length_tokens():
    x = -100
    labels = torch.tensor([[x, 5, 6, 7, x], [x, x, 1, 2, 3], [x, 8, 9, x, x], [x, 4, 4, 4, 4]])  # pairs (0, 2), (1, 3)
    want = torch.tensor([[x, 5, 6, x, x], [x, x, 1, 2, 3], [x, 8, 9, x, x], [x, 4, 4, 4, x]])
    assert torch.equal(shared_labels(labels), want)


def test_weighted_sum_is_the_weighted_mean_of_its_terms():
    mpo = combine_losses([("dpo", 0.8, {}), ("bco_pair", 0.2, {}), ("sft", 1.0, {})])
    assert mpo.batch_coupled and mpo.needs_reference and mpo.uses == ("chosen", "rejected")
    want = 0.8 * ls(0.2) + 0.2 * 2 * ls(0.1) + 1.0 * 10 / 5
    assert mpo.fn(A).losses.item() == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="weight"):
        combine_losses([("dpo", -1.0, {})])
    with pytest.raises(HyperparameterError):
        combine_losses([("dpo", 1.0, {"gamma": 1.0})])


# TRL's own restrictions: f-DPO only for these types; WPO not for the sorting ones, and TRL 1.16 itself fails on
# hinge and sft with use_weighting (an in-place multiply autograd or an expanded tensor refuses): ours is tested
# by hand above and in test_trl_all_losses.
F_TYPES = {"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop"}
SMOOTHED = {"exo_pair", "robust", "aot", "aot_unpaired"}
CASES = [(lt, {}) for lt in TRL_NAMES]
CASES += [(lt, {"ld_alpha": 0.3}) for lt in TRL_NAMES]
CASES += [(lt, {"use_weighting": True}) for lt in TRL_NAMES if lt not in {"aot", "aot_unpaired", "hinge", "sft"}]
CASES += [(lt, {"label_smoothing": 0.2}) for lt in SMOOTHED | {"sigmoid"}]  # sigmoid: TRL ignores it, as we map it
CASES += [(lt, {"f_divergence_type": f}) for lt in F_TYPES | {"sft"} for f in ("js_divergence", "forward_kl")]
CASES += [("sigmoid", {"beta": 0.5, "ld_alpha": 0.0, "use_weighting": True, "f_divergence_type": "js_divergence"})]
CASES += [("discopop", {"discopop_tau": 0.5})]


@pytest.mark.parametrize(("loss_type", "options"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_parity_with_trl_compute_loss(loss_type, options):
    options = {"label_smoothing": 1e-3, **options} if loss_type == "exo_pair" else options
    lp, ref, lsq, mask = random_batch(seed=len(loss_type))
    theirs = trl_loss(lp, ref, lsq, mask, loss_type=loss_type, **options)
    (g_theirs,) = torch.autograd.grad(theirs, lp)
    mine = our_loss(lp, ref, lsq, mask, loss_type=loss_type, **options)
    (g_mine,) = torch.autograd.grad(mine, lp)
    scored = mask[:, 1:].bool()  # TRL's stand-in model has unmasked zeros elsewhere: compare the scored tokens
    assert abs(mine.item() - theirs.item()) <= 1e-6 * max(1.0, abs(theirs.item()))
    assert (g_mine - g_theirs)[scored].abs().max() <= 1e-6 * max(1.0, g_theirs.abs().max().item())
    assert g_theirs[scored].abs().max() > 1e-4  # a loss that reaches the log-probs


def test_parity_alpha_divergence_in_float32():
    """TRL 1.16's α-divergence clamps by a dtype table without float64: compared in float32 (1e-5)."""
    lp, ref, lsq, mask = random_batch(seed=3, dtype=torch.float32)
    for lt in ("sigmoid", "ipo", "robust"):
        opts = {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.3, "label_smoothing": 0.1}
        theirs = trl_loss(lp, ref, lsq, mask, loss_type=lt, **opts)
        (g_theirs,) = torch.autograd.grad(theirs, lp)
        mine = our_loss(lp, ref, lsq, mask, loss_type=lt, **opts)
        (g_mine,) = torch.autograd.grad(mine, lp)
        assert mine.item() == pytest.approx(theirs.item(), rel=1e-5)
        assert (g_mine - g_theirs)[mask[:, 1:].bool()].abs().max() <= 1e-5 * g_theirs.abs().max()


@pytest.mark.parametrize("options", [{}, {"ld_alpha": 0.5}, {"use_weighting": True}])
def test_parity_mpo_weighted_list(options):
    types, weights = ["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0]
    if options.get("use_weighting"):
        types, weights = ["sigmoid", "bco_pair", "apo_zero"], [0.8, 0.2, 1.0]  # TRL fails on sft + WPO
    lp, ref, lsq, mask = random_batch(seed=11)
    theirs = trl_loss(lp, ref, lsq, mask, loss_type=types, loss_weights=weights, **options)
    (g_theirs,) = torch.autograd.grad(theirs, lp)
    mine = our_loss(lp, ref, lsq, mask, loss_type=types, loss_weights=weights, **options)
    (g_mine,) = torch.autograd.grad(mine, lp)
    assert abs(mine.item() - theirs.item()) <= 1e-6 * max(1.0, abs(theirs.item()))
    assert (g_mine - g_theirs)[mask[:, 1:].bool()].abs().max() <= 1e-6 * g_theirs.abs().max()
