"""The paper's theorems, checked numerically; the toy reproduces the predicted ordering."""

import json

import pytest

from logitsam.theory import checks
from logitsam.theory.run import run_toy
from logitsam.theory.toy import ToyConfig, modal_coefficients, simulate


def test_prop31_kronecker_structure():
    for v, d in [(3, 6), (5, 4)]:
        r = checks.check_prop31(v=v, d=d, seed=v)
        assert r["rel_error"] < 1e-12 and r["rank_H_W"] == r["rank_H_z"] == v - 1


def test_prop33_logit_hessian_structure():
    r = checks.check_prop33(v=6, trials=100)
    assert r["passed"], r


def test_thm32_remainder_is_second_order():
    r = checks.check_thm32()
    for name, slope in r["slopes"].items():
        assert 1.8 < slope < 2.2, (name, slope)


def test_thm32_check_can_fail_without_sam_correction(monkeypatch):
    # Dropping SAM's H_z g correction leaves a first-order error: the fitted slope drops well below 2
    # (ρ = κ√η makes the missing term O(η^1.5)).
    real = checks.first_order_step
    monkeypatch.setattr(checks, "first_order_step", lambda w, phi, y, lr, rho: real(w, phi, y, lr, 0.0))
    assert checks.check_thm32()["slope"] < 1.7


def test_cor34_modal_recursion():
    r = checks.check_cor34()
    assert r["passed"] and r["max_remainder_over_eta2"] < 1e3


def test_cor36_property_over_1000_instances():
    r = checks.check_cor36(instances=1000)
    assert r["instances"] == 1000 and r["pass_rate"] == 1.0, r["failures"]
    assert r["instances_with_p_y_le_half"] > 500


def test_cor36_fails_with_opposite_sign():
    # ηρ < 0 reverses SAM's curvature correction: the inequalities must then fail.
    r = checks.check_cor36(instances=200, kappa=-1.0)
    assert r["pass_rate"] < 0.05


def test_modal_coefficients_reconstruct_residual():
    cfg = ToyConfig(dim=20)
    traj = simulate(cfg)["gd"]
    import torch

    p = torch.tensor(traj.probs[3], dtype=torch.float64)
    g = torch.tensor(traj.residuals[3], dtype=torch.float64)
    lam, e = modal_coefficients(p, g)
    assert lam.shape == (2,) and (lam > 0).all()
    assert float(e.square().sum()) == pytest.approx(float(g.square().sum()), rel=1e-12)  # g ⟂ 1


def test_toy_prediction_and_summary(tmp_path):
    s = run_toy(str(tmp_path), ToyConfig(dim=200), checks=False)
    assert s["sam_pos"]["p0_final"] > s["gd"]["p0_final"] > s["sam_neg"]["p0_final"]
    assert (tmp_path / "toy.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert set(saved) >= {"gd", "sam_pos", "sam_neg", "settings"}
    # phase 2 squeezes: the label class falls and the most confident wrong class rises
    gd = s["gd"]["p_final"]
    start = simulate(ToyConfig(dim=200, neg_steps=0))["gd"].probs[0]
    assert gd[1] < start[1] and gd[0] > start[0]
