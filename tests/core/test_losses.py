"""Losses against hand-derived values, gradient facts and numerical safety."""

import math

import pytest
import torch

from logitsam.core.losses import PreferenceLogps
from logitsam.core.registry import LOSSES, compute_loss, get_loss, resolve_hparams

D = torch.float64


def pair(c, r, rc, rr, lc, lr, sc=None, sr=None, grad=False):
    t = lambda v: None if v is None else torch.tensor([float(v)], dtype=D, requires_grad=grad)  # noqa: E731
    return PreferenceLogps(
        chosen=t(c),
        rejected=t(r),
        chosen_lengths=torch.tensor([lc]),
        rejected_lengths=torch.tensor([lr]),
        ref_chosen=t(rc),
        ref_rejected=t(rr),
        chosen_scores=t(sc),
        rejected_scores=t(sr),
    )


# Pair A: Δ+ = 1, Δ− = −1, δ = 2 (βδ = 0.2 at β = 0.1); means −2 (5 tokens) and −3 (4 tokens).
A = pair(-10, -12, -11, -11, 5, 4)
# Pair B: Δ+ = −2, Δ− = −0.5, δ = −1.5: the chosen response is squeezed below the reference.
B = pair(-20, -19.5, -18, -19, 10, 10)

HAND = [
    # (loss, pair, hparams, value derived by hand)
    ("dpo", A, {}, 0.5981388693815918),  # log(1 + e^-0.2)
    ("dpo", A, {"label_smoothing": 0.1}, 0.6181388693815918),  # 0.9 log(1+e^-0.2) + 0.1 log(1+e^0.2)
    ("dpo", B, {}, math.log1p(math.exp(0.15))),
    ("hinge", A, {}, 0.8),  # max(0, 1 − 0.2)
    ("hinge", B, {}, 1.15),
    ("ipo", A, {}, 20.7025),  # (1/5 + 1/4 − 1/(2·0.1))² = (0.45 − 5)²
    ("slic", A, {}, 1.0),  # max(0, 1 + 10 − 12) + 0.1·10
    ("slic", B, {}, 3.5),  # max(0, 1 + 20 − 19.5) + 0.1·20
    ("slic", B, {"nll_mode": "mean"}, 1.7),  # 1.5 + 0.1·(20/10)
    ("cpo", A, {}, 10.598138869381591),  # log(1+e^-0.2) + 1.0·10
    ("cpo", A, {"nll_mode": "mean"}, 2.5981388693815918),  # log(1+e^-0.2) + 2
    ("simpo", A, {}, 0.31326168751822286),  # log(1 + e^-(2·(−2+3) − 1))
    ("gate_dpo", A, {}, 0.5981388693815918),  # value identical to DPO
    ("dpo_abs", A, {}, 0.5981388693815918),  # chosen above reference: no penalty
    ("dpo_abs", B, {}, math.log1p(math.exp(0.15)) + 0.2),  # + 0.1·max(0, 2)
    ("dpop", A, {}, 0.5981388693815918),  # chosen above reference: DPO's value, log(1 + e^-0.2)
    # B: Δ+ = −2, Δ− = −0.5; margin inside σ: β(−1.5 − 50·2) = −10.15 → log(1 + e^10.15)
    ("dpop", B, {}, math.log1p(math.exp(10.15))),
    ("dpop", B, {"lam": 1.0, "beta": 0.5}, math.log1p(math.exp(1.75))),  # 0.5·(−1.5 − 2) = −1.75
    ("spo_target", A, {}, 0.1559069707756651),  # 2 log cosh((0.2 − 1)/2)
    ("spo_target", pair(-10, -12, -11, -11, 5, 4, sc=3, sr=1), {"score_scale": 0.5}, 0.1559069707756651),
    ("spo_target", A, {"target": 0.2}, 0.0),  # at the target
    # ORPO on A: means −2, −3; log odds ratio = 1 − log(1 − e^−2) + log(1 − e^−3); loss = 2 + β·log(1 + e^−lor)
    ("orpo", A, {}, 2 + 0.1 * math.log1p(math.exp(-(1 - math.log(1 - math.exp(-2)) + math.log(1 - math.exp(-3)))))),
    (
        "orpo",
        B,
        {"beta": 1.0},
        2 + math.log1p(math.exp(-(-0.05 - math.log(1 - math.exp(-2)) + math.log(1 - math.exp(-1.95))))),
    ),
]


@pytest.mark.parametrize(("name", "inp", "hp", "expected"), HAND)
def test_hand_derived_values(name, inp, hp, expected):
    out = compute_loss(name, inp, **hp)
    assert out.losses.shape == (1,)
    assert out.losses.item() == pytest.approx(expected, abs=1e-12)


def test_every_registered_loss_has_a_hand_value():
    from logitsam.core.registry_trl import TRL_LOSSES  # their hand values: test_losses_trl.py

    assert {h[0] for h in HAND} | {row[0] for row in TRL_LOSSES} == set(LOSSES)


def test_orpo_is_finite_at_both_ends_of_the_odds():
    """log(1 − e^x) is computed stably: a response of probability ≈ 1 (x → 0⁻) or ≈ 0 (x ≪ 0) gives a
    finite loss and gradient (the naive log1p(−exp(x)) is −inf at x = 0 and loses all digits near it)."""
    for c, r in ((-1e-12, -3.0), (0.0, -3.0), (-4000.0, -1e-9), (-1e-7, -2e-7)):
        inp = pair(c, r, None, None, 5, 5, grad=True)
        out = compute_loss("orpo", inp)
        out.losses.sum().backward()
        assert torch.isfinite(out.losses).all() and torch.isfinite(inp.chosen.grad).all(), (c, r)
    # near x = 0 the odds are large but exact: P = 1 − 1e-8 per mean token → log odds ≈ log(1e8)
    inp = pair(-5e-8, -5.0, None, None, 5, 5)
    lor = -1e-8 - (-1.0) - (math.log(1e-8) - math.log(1 - math.exp(-1.0)))
    expected = 1e-8 + 0.1 * math.log1p(math.exp(-lor))
    assert compute_loss("orpo", inp).losses.item() == pytest.approx(expected, rel=1e-9)


def test_rewards():
    out = compute_loss("dpo", A)
    assert out.chosen_rewards.item() == pytest.approx(0.1)
    assert out.rejected_rewards.item() == pytest.approx(-0.1)
    out = compute_loss("simpo", A)  # β · mean log-prob
    assert out.chosen_rewards.item() == pytest.approx(-4.0)
    out = compute_loss("ipo", A)  # β · length-normalised log-ratio
    assert out.chosen_rewards.item() == pytest.approx(0.02)


def test_reference_requirement_matches_spec():
    no_ref = pair(-10, -12, None, None, 5, 4)
    for name, spec in LOSSES.items():
        if spec.needs_reference:
            with pytest.raises(ValueError, match="reference"):
                compute_loss(name, no_ref)
        else:
            assert torch.isfinite(compute_loss(name, no_ref).losses).all()


def grads(name, inp, **hp):
    out = compute_loss(name, inp, **hp)
    out.losses.sum().backward()
    return inp.chosen.grad.item(), inp.rejected.grad.item()


@pytest.mark.parametrize("values", [(-10, -12, -11, -11, 5, 4), (-3, -2, -3.5, -2.2, 3, 2), (-40, -9, -35, -10, 8, 6)])
def test_gate_dpo_scales_rejected_gradient_by_gate(values):
    gc, gr = grads("gate_dpo", pair(*values, grad=True))
    dc, dr = grads("dpo", pair(*values, grad=True))
    c, r, rc, rr, _lc, lr = values
    gate = 1.0 / (1.0 + math.exp(-10.0 * (math.exp(r / lr) - 0.1)))  # σ(α(p − τ)), α=10, τ=0.1
    assert gc == pytest.approx(dc, rel=1e-12)
    assert gr == pytest.approx(gate * dr, rel=1e-12)
    # DPO's gradient in logp(y−) is β σ(−βδ), by hand:
    u = 0.1 * ((c - rc) - (r - rr))
    assert dr == pytest.approx(0.1 / (1.0 + math.exp(u)), rel=1e-12)


def test_dpo_abs_equals_dpo_above_reference_and_pushes_chosen_below():
    ga, _ = grads("dpo_abs", pair(-10, -12, -11, -11, 5, 4, grad=True))
    da, _ = grads("dpo", pair(-10, -12, -11, -11, 5, 4, grad=True))
    assert ga == pytest.approx(da, rel=1e-12)
    gb, _ = grads("dpo_abs", pair(-20, -19.5, -18, -19, 10, 10, grad=True))
    db, _ = grads("dpo", pair(-20, -19.5, -18, -19, 10, 10, grad=True))
    assert gb == pytest.approx(db - 0.1, rel=1e-12)  # extra −λ on ∂/∂logp(y+)


def test_dpop_gradient_on_a_squeezed_chosen_is_lambda_plus_one_times_dpo():
    # below the reference, ∂/∂logp(y+) of the margin is 1 + λ: descent pulls the chosen up (1 + λ)× as hard
    m = 0.1 * (-1.5 - 50 * 2)
    g, gr = grads("dpop", pair(-20, -19.5, -18, -19, 10, 10, grad=True))
    s = 1 / (1 + math.exp(m))  # σ(−m) = −∂ℓ/∂m
    assert g == pytest.approx(-0.1 * 51 * s, rel=1e-12)
    assert gr == pytest.approx(0.1 * s, rel=1e-12)
    ga, _ = grads("dpop", pair(-10, -12, -11, -11, 5, 4, grad=True))
    da, _ = grads("dpo", pair(-10, -12, -11, -11, 5, 4, grad=True))
    assert ga == pytest.approx(da, rel=1e-12)


def test_spo_target_gradient_is_bounded_and_vanishes_at_target():
    _, gr = grads("spo_target", pair(-10, -2000, -11, -11, 5, 4, grad=True))  # y− pushed to ~0 prob.
    assert abs(gr) <= 0.1 + 1e-12  # |∂ℓ/∂logp(y−)| ≤ β
    assert gr < 0  # past the target, descent raises logp(y−) again instead of pushing it down
    gc, gr = grads("spo_target", pair(-10, -12, -11, -11, 5, 4, grad=True), target=0.2)
    assert gc == pytest.approx(0.0, abs=1e-15) and gr == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_finite_at_huge_margins(name, sign):
    # |βδ| = 1e4 for β = 0.1; also huge raw log-prob gaps for the reference-free losses.
    big = sign * 5e4
    inp = PreferenceLogps(
        chosen=torch.tensor([big, 0.0], dtype=torch.float32, requires_grad=True),
        rejected=torch.tensor([-big, 0.0], dtype=torch.float32, requires_grad=True),
        chosen_lengths=torch.tensor([3, 3]),
        rejected_lengths=torch.tensor([3, 3]),
        ref_chosen=torch.zeros(2),
        ref_rejected=torch.zeros(2),
        chosen_scores=torch.tensor([1.0, 0.0]),
        rejected_scores=torch.tensor([0.0, 0.0]),
    )
    out = compute_loss(name, inp)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all()
    for side in LOSSES[name].uses:  # sft never reads the rejected side
        assert torch.isfinite(getattr(inp, side).grad).all()


def test_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="unknown loss 'dp0'"):
        get_loss("dp0")
    with pytest.raises(ValueError, match="no hyperparameter 'gama'"):
        resolve_hparams(get_loss("simpo"), {"gama": 1.0})


def test_specs_describe_defaults():
    assert LOSSES["dpo"].defaults == {
        "beta": 0.1,
        "label_smoothing": 0.0,
        "f_divergence": "reverse_kl",
        "f_alpha": 0.5,
        "ld_alpha": 1.0,
        "use_weighting": False,
    }  # fmt: skip  — TRL's options (test_losses_trl) default to plain DPO
    assert LOSSES["cpo"].defaults["nll_weight"] == 1.0  # paper Table 5: λ = 1
    assert LOSSES["simpo"].length_normalized and not LOSSES["dpo"].length_normalized
    assert not LOSSES["slic"].needs_reference and LOSSES["gate_dpo"].needs_reference


# ---- hyperparameter ranges --------------------------------------------------------------------
from logitsam.core.registry import HyperparameterError, describe_losses  # noqa: E402

HOSTILE = [float("nan"), float("inf"), -float("inf"), "0.1", None, True, [0.1], {"x": 1}]


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_hyperparameter_has_a_range_and_defaults_pass(name):
    spec = LOSSES[name]
    assert set(spec.ranges) == set(spec.defaults)
    assert resolve_hparams(spec) == dict(spec.defaults)


@pytest.mark.parametrize(("name", "key"), [(n, k) for n in sorted(LOSSES) for k in LOSSES[n].defaults])
def test_hostile_values_name_loss_and_key(name, key):
    spec = LOSSES[name]
    rng = spec.ranges[key]
    hostile = [v for v in HOSTILE if not isinstance(v, bool)] + [1, 0.0] if rng.boolean else HOSTILE  # a switch
    for value in hostile:
        with pytest.raises(HyperparameterError, match=rf"loss '{name}': {key} = ") as err:
            resolve_hparams(spec, {key: value})
        assert err.value.key == key and err.value.loss == name
    if not rng.choices:  # just outside each finite bound is rejected, the bound itself only if closed
        for bound, open_, step in ((rng.low, rng.low_open, -1e-9), (rng.high, rng.high_open, 1e-9)):
            if math.isinf(bound):
                continue
            with pytest.raises(HyperparameterError, match="outside"):
                resolve_hparams(spec, {key: bound + step})
            if open_:
                with pytest.raises(HyperparameterError, match="outside"):
                    resolve_hparams(spec, {key: bound})
            else:
                assert resolve_hparams(spec, {key: bound})[key] == bound


@pytest.mark.parametrize(
    ("name", "hp", "message"),
    [
        ("dpo", {"beta": 0}, r"beta = 0: 0.0 is outside \(0, inf\) \(β < 0 trains toward the rejected"),
        ("dpo", {"beta": -0.1}, "outside"),
        ("dpo", {"label_smoothing": 0.5}, r"outside \[0, 0.5\)"),
        ("ipo", {"beta": 0.0}, "outside"),
        ("slic", {"nll_mode": "median"}, "'median' is not one of sum, mean"),
        ("cpo", {"nll_mode": 1}, "is not one of sum, mean"),
        ("slic", {"margin": -1.0}, "outside"),
        ("gate_dpo", {"tau": 1.5}, r"outside \[0, 1\]"),
        ("spo_target", {"score_scale": 0}, "outside"),
        ("dpo", {"beta": "0.1"}, "expected a number, got str"),
    ],
)
def test_out_of_range_examples(name, hp, message):
    with pytest.raises(HyperparameterError, match=message):
        compute_loss(name, A, **hp)


def test_ints_become_floats_and_numpy_numbers_pass():
    import numpy as np

    got = resolve_hparams(LOSSES["dpo"], {"beta": 1, "ld_alpha": 0})
    assert (got["beta"], got["ld_alpha"], got["label_smoothing"]) == (1.0, 0.0, 0.0)
    assert all(type(got[k]) is float for k in ("beta", "ld_alpha"))
    assert isinstance(resolve_hparams(LOSSES["dpo"], {"beta": np.float32(0.5)})["beta"], float)


def test_a_spec_without_ranges_still_rejects_nan_and_wrong_types():
    from logitsam.core.losses import dpo
    from logitsam.core.registry import LossSpec

    spec = LossSpec("custom", dpo, True, False, {"beta": 0.1, "label_smoothing": 0.0})
    assert resolve_hparams(spec, {"beta": -3})["beta"] == -3.0  # no declared range: any finite number
    for bad in (float("nan"), "x", None, True):
        with pytest.raises(HyperparameterError, match="loss 'custom': beta"):
            resolve_hparams(spec, {"beta": bad})


def test_describe_losses_lists_every_hyperparameter():
    rows = describe_losses()
    assert {(r.loss, r.hparam) for r in rows} == {(n, k) for n, s in LOSSES.items() for k in s.defaults}
    dpo_beta = next(r for r in rows if (r.loss, r.hparam) == ("dpo", "beta"))
    assert (dpo_beta.default, dpo_beta.range) == (0.1, "(0, inf)") and "rejected" in dpo_beta.why
    ls = next(r for r in rows if r.hparam == "label_smoothing")
    assert ls.range == "[0, 0.5)"
    assert next(r for r in rows if r.hparam == "nll_mode").range == "one of sum, mean"
