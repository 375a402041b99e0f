"""Numerical checks of the paper's Proposition 3.1, Proposition 3.3, Theorem 3.2, Corollaries 3.4 and 3.6.

Each check returns a small dict of measured quantities plus ``passed``; tests assert on them and
``logitsam toy`` prints them. All in float64 on the toy model of :mod:`logitsam.theory.toy`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from logitsam.theory.toy import D, logit_hessian, sam_step, softmax_grad


def _instance(gen: torch.Generator, v: int, d: int, scale: float = 1.0) -> tuple[Tensor, Tensor, int]:
    w = scale * torch.randn(v, d, generator=gen, dtype=D)
    phi = torch.randn(d, generator=gen, dtype=D)
    label = int(torch.randint(0, v, (1,), generator=gen))
    return w, phi, label


def _rank(sym: Tensor) -> int:
    """Numerical rank of a symmetric matrix: eigenvalues above 1e-10 of the largest."""
    eig = torch.linalg.eigvalsh(sym).abs()
    return int((eig > 1e-10 * eig.max()).sum())


def check_prop31(v: int = 3, d: int = 6, seed: int = 0) -> dict:
    """H_W (autograd Hessian of f in vec(W), row-major) equals H_z ⊗ φφᵀ."""
    gen = torch.Generator().manual_seed(seed)
    w, phi, label = _instance(gen, v, d)

    def f(flat: Tensor) -> Tensor:
        return -torch.log_softmax(flat.reshape(v, d) @ phi, 0)[label]

    h_w = torch.autograd.functional.hessian(f, w.reshape(-1))
    p = torch.softmax(w @ phi, 0)
    kron = torch.kron(logit_hessian(p), torch.outer(phi, phi))
    err = ((h_w - kron).norm() / kron.norm()).item()
    rank_w, rank_z = _rank(h_w), _rank(logit_hessian(p))
    return {"rel_error": err, "rank_H_W": rank_w, "rank_H_z": rank_z, "passed": err < 1e-12 and rank_w == rank_z}


def check_prop33(v: int = 5, trials: int = 200, seed: int = 0) -> dict:
    """H_z symmetric PSD, kernel span{1}, rank V−1, and 1ᵀg = 0, over random logits."""
    gen = torch.Generator().manual_seed(seed)
    worst = {"asym": 0.0, "min_eig": math.inf, "ker": 0.0, "sum_g": 0.0}
    ranks_ok = True
    for _ in range(trials):
        z = 3.0 * torch.randn(v, generator=gen, dtype=D)
        p = torch.softmax(z, 0)
        h = logit_hessian(p)
        g = p - torch.nn.functional.one_hot(torch.randint(0, v, (1,), generator=gen), v).to(D)[0]
        eig = torch.linalg.eigvalsh(h)
        worst["asym"] = max(worst["asym"], (h - h.T).abs().max().item())
        worst["min_eig"] = min(worst["min_eig"], eig.min().item())
        worst["ker"] = max(worst["ker"], (h @ torch.ones(v, dtype=D)).abs().max().item())
        worst["sum_g"] = max(worst["sum_g"], g.sum().abs().item())
        ranks_ok &= _rank(h) == v - 1
    passed = worst["asym"] == 0 and worst["min_eig"] > -1e-15 and worst["ker"] < 1e-15 and worst["sum_g"] < 1e-14
    return {**worst, "rank_is_V_minus_1": ranks_ok, "trials": trials, "passed": passed and ranks_ok}


def first_order_step(w: Tensor, phi: Tensor, label: int, lr: float, rho: float) -> tuple[Tensor, Tensor, Tensor]:
    """Theorem 3.2's expansion without remainder: (W, z, g) after one SAM step."""
    p, g, _ = softmax_grad(w, phi, label)
    mu = phi.dot(phi)
    rho_t = rho * mu.sqrt() / g.norm() if g.norm() > 0 else torch.zeros((), dtype=D)
    hz = logit_hessian(p)
    direction = g + rho_t * (hz @ g)
    w_next = w - lr * torch.outer(direction, phi)
    z_next = w @ phi - lr * mu * direction
    g_next = g - lr * mu * (hz @ g) - lr * mu * rho_t * (hz @ hz @ g)
    return w_next, z_next, g_next


def check_thm32(v: int = 3, d: int = 50, kappa: float = 0.5, seed: int = 0, lrs: list[float] | None = None) -> dict:
    """Remainders of W, z, g after one SAM step (ρ = κ√|η|, as the theorem assumes) shrink as η².

    Fits the log-log slope of each remainder norm against η; the theorem predicts 2.
    """
    gen = torch.Generator().manual_seed(seed)
    w, phi, label = _instance(gen, v, d, scale=0.3)
    phi = phi / phi.norm()
    lrs = lrs or [10.0 ** (-k / 2) for k in range(2, 9)]
    rem = {"W": [], "z": [], "g": []}
    for sign in (1.0, -1.0):
        for lr in lrs:
            eta, rho = sign * lr, sign * kappa * lr**0.5
            w1 = sam_step(w, phi, label, eta, rho)
            _, g1, _ = softmax_grad(w1, phi, label)
            wf, zf, gf = first_order_step(w, phi, label, eta, rho)
            rem["W"].append((w1 - wf).norm().item())
            rem["z"].append((w1 @ phi - zf).norm().item())
            rem["g"].append((g1 - gf).norm().item())
    x = torch.log(torch.tensor(lrs + lrs, dtype=D))
    slopes = {}
    for k, r in rem.items():
        y = torch.log(torch.tensor(r, dtype=D))
        xc = x - x.mean()
        slopes[k] = (xc @ (y - y.mean()) / (xc @ xc)).item()
    slope = min(slopes.values())
    return {"slopes": slopes, "slope": slope, "lrs": lrs, "passed": slope > 1.8}


def check_cor34(v: int = 4, d: int = 40, lr: float = 1e-3, kappa: float = 0.5, seed: int = 0) -> dict:
    """Modal recursion e_k(t+1) ≈ (1 − ημ[λ_k + ρ̃λ_k²]) e_k(t) with remainder O(η²)."""
    gen = torch.Generator().manual_seed(seed)
    w, phi, label = _instance(gen, v, d, scale=0.3)
    worst = 0.0
    for eta in (lr, -lr, lr / 10, -lr / 10):
        rho = math.copysign(kappa * abs(eta) ** 0.5, eta)
        p, g, _ = softmax_grad(w, phi, label)
        lam, vec = torch.linalg.eigh(logit_hessian(p))
        keep = torch.argsort(lam, descending=True)[: v - 1]
        lam, vec = lam[keep], vec[:, keep]
        mu = phi.dot(phi)
        rho_t = rho * mu.sqrt() / g.norm()
        _, g1, _ = softmax_grad(sam_step(w, phi, label, eta, rho), phi, label)
        e0, e1 = vec.T @ g, vec.T @ g1
        pred = (1 - eta * mu * (lam + rho_t * lam**2)) * e0
        worst = max(worst, ((e1 - pred).abs().max() / eta**2).item())
    return {"max_remainder_over_eta2": worst, "passed": worst < 1e3}


def confidence_ratios(w: Tensor, phi: Tensor, label: int, lr: float, rho: float) -> Tensor:
    """α_i = p_i(t+1)/p_i(t) for every class after one step (ρ = 0: GD)."""
    p0 = torch.softmax(w @ phi, 0)
    p1 = torch.softmax(sam_step(w, phi, label, lr, rho) @ phi, 0)
    return p1 / p0


def check_cor36(instances: int = 1000, lr: float = 1e-4, kappa: float = 1.0, seed: int = 0) -> dict:
    """Corollary 3.6 on random instances, ηρ > 0, |ρ| = κ√|η|, both signs of η.

    α_{y*}^SAM ≤ α_{y*}^GD always; α_y^SAM ≥ α_y^GD required when p_y ≤ 1/2 (the corollary's
    condition); both strict in that case. Returns the pass rate and the counts.
    """
    gen = torch.Generator().manual_seed(seed)
    passed = checked_y = 0
    failures: list[dict] = []
    for i in range(instances):
        v = int(torch.randint(3, 11, (1,), generator=gen))
        d = int(torch.randint(2, 64, (1,), generator=gen))
        w, phi, label = _instance(gen, v, d, scale=float(torch.rand(1, generator=gen)) * 2.0 / d**0.5)
        sign = 1.0 if i % 2 == 0 else -1.0
        eta, rho = sign * lr, sign * kappa * lr**0.5
        p = torch.softmax(w @ phi, 0)
        others = p.clone()
        others[label] = -1.0
        y_star = int(others.argmax())
        a_gd = confidence_ratios(w, phi, label, eta, 0.0)
        a_sam = confidence_ratios(w, phi, label, eta, rho)
        ok = bool(a_sam[y_star] < a_gd[y_star])
        if p[label] <= 0.5:
            checked_y += 1
            ok &= bool(a_sam[label] > a_gd[label])
        passed += ok
        if not ok and len(failures) < 5:
            failures.append({"V": v, "d": d, "eta": eta, "p_y": p[label].item(), "p_y*": p[y_star].item()})
    return {
        "instances": instances,
        "pass_rate": passed / instances,
        "instances_with_p_y_le_half": checked_y,
        "failures": failures,
        "passed": passed == instances,
    }


def run_all() -> dict[str, dict]:
    """Every check with its default settings."""
    return {
        "prop31": check_prop31(),
        "prop33": check_prop33(),
        "thm32": check_thm32(),
        "cor34": check_cor34(),
        "cor36": check_cor36(),
    }
