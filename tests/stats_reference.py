"""Independent references for the study-statistics tests: Student-t quantiles from the closed-form CDF
(mpmath's hypergeometric function, not the incomplete beta function stats.py inverts), the crossed
random-effects interval written out with loops, plain percentile bootstraps, t intervals with
hand-supplied quantiles, and the assertions that compare an Estimate with them."""

import functools
import math
import statistics
from pathlib import Path

import mpmath
import numpy as np
import pytest

from experiments.stats import (
    Estimate,
)

ROOT = Path(__file__).resolve().parents[1]

NAN = float("nan")

# two-sided 95% Student-t quantiles (printed tables)
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
# the same in closed form for 1 df (Cauchy: tan(π·0.95/2)) and 2 df (0.95·√(2/(1 − 0.95²)))
T1 = math.tan(0.475 * math.pi)
T2 = 0.95 * math.sqrt(2 / (1 - 0.95**2))


@functools.cache
def ref_t(df, level=0.95):
    """Two-sided Student-t quantile from the closed-form CDF
    P(|T| < t) = 2 t Γ((ν+1)/2) / (√(νπ) Γ(ν/2)) · ₂F₁(½, (ν+1)/2; 3/2; −t²/ν), solved by bisection
    (mpmath; for ν up to a few thousand)."""
    nu = mpmath.mpf(df)
    c = mpmath.gamma((nu + 1) / 2) / (mpmath.sqrt(mpmath.pi * nu) * mpmath.gamma(nu / 2))

    def central(t):
        return 2 * t * c * mpmath.hyp2f1(0.5, (nu + 1) / 2, 1.5, -t * t / nu)

    lo, hi = mpmath.mpf("1e-8"), mpmath.mpf("1e8")
    for _ in range(200):  # bisection of log t
        mid = mpmath.sqrt(lo * hi)
        lo, hi = (mid, hi) if central(mid) < level else (lo, mid)
    return float(mpmath.sqrt(lo * hi))


def ref_crossed(grid, level=0.95):
    """The crossed random-effects interval, written out independently with loops.

    Returns {mean, low, high, n} plus the mean squares, the degrees of freedom and whether the
    negative-component fallback was taken. Seeds without any outcome are dropped, then prompts with
    a missing cell; one seed (or one prompt): the t interval over the values."""
    rows = [[float(v) for v in r] for r in grid]
    rows = [r for r in rows if any(v == v for v in r)]
    if not rows:
        return {"mean": NAN, "low": NAN, "high": NAN, "n": 0}
    keep = [j for j in range(len(rows[0])) if all(r[j] == r[j] for r in rows)]
    x = [[r[j] for j in keep] for r in rows]
    S, P = len(x), len(keep)
    if P == 0:
        return {"mean": NAN, "low": NAN, "high": NAN, "n": 0}
    N = S * P
    m = sum(sum(r) for r in x) / N
    if S == 1 or P == 1:
        v = [c for r in x for c in r]
        if len(v) < 2:
            return {"mean": m, "low": NAN, "high": NAN, "n": S}
        half = ref_t(len(v) - 1, level) * statistics.stdev(v) / math.sqrt(len(v))
        return {"mean": m, "low": m - half, "high": m + half, "n": S, "df": len(v) - 1, "fallback": False}
    rmean = [sum(r) / P for r in x]
    cmean = [sum(x[i][j] for i in range(S)) / S for j in range(P)]
    ss_tot = sum((x[i][j] - m) ** 2 for i in range(S) for j in range(P))
    ss_s = P * sum((r - m) ** 2 for r in rmean)
    ss_p = S * sum((c - m) ** 2 for c in cmean)
    ss_e = ss_tot - ss_s - ss_p
    ms_s, ms_p, ms_e = ss_s / (S - 1), ss_p / (P - 1), ss_e / ((S - 1) * (P - 1))
    var_seed, var_prompt = (ms_s - ms_e) / P, (ms_p - ms_e) / S  # the variance components
    tie = 1e-9 * max(ms_s, ms_p, ms_e) / min(S, P)  # components within rounding of 0 count as 0
    var_seed, var_prompt = (
        (var_seed if var_seed * P > tie * min(S, P) else 0.0),
        (var_prompt if var_prompt * S > tie * min(S, P) else 0.0),
    )
    fallback = var_seed <= 0 or var_prompt <= 0
    if var_seed > 0 and var_prompt > 0:  # Satterthwaite, floored at the smaller df of the two positive terms
        v = ms_s + ms_p - ms_e
        df = v * v / (ms_s**2 / (S - 1) + ms_p**2 / (P - 1) + ms_e**2 / ((S - 1) * (P - 1)))
        df = max(df, min(S - 1, P - 1))
    elif var_prompt > 0:  # the seed component truncated at 0: σ²_p/P + σ²_e/(SP) = MS_prompt/(SP); its
        # estimate still rests on S − 1 df: Satterthwaite over MS_e (seed df) + MS_p − MS_e (issue 30)
        v = ms_p
        df = v * v / (ms_e**2 / (S - 1) + ms_p**2 / (P - 1) + ms_e**2 / ((S - 1) * (P - 1)))
        df = max(df, min(S - 1, P - 1))
    elif var_seed > 0:
        v, df = ms_s, S - 1
    else:  # both truncated: σ²_e/(SP) = MS_cell/(SP)
        v, df = ms_e, (S - 1) * (P - 1)
    half = ref_t(df, level) * math.sqrt(v / N) if v > 0 else 0.0
    return {
        "mean": m,
        "low": m - half,
        "high": m + half,
        "n": S,
        "ms": (ms_s, ms_p, ms_e),
        "df": df,
        "fallback": fallback,
    }


def plain_bootstrap(values, resamples=4000, seed=123, level=0.95):
    """Ordinary percentile bootstrap of the mean of iid values (an independent reference)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (resamples, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(v.mean()), float(lo), float(hi)


def t_interval(values, t):
    """mean, low, high of mean ± t·s/√n with a hand-supplied t quantile."""
    m = statistics.fmean(values)
    half = t * statistics.stdev(values) / math.sqrt(len(values))
    return m, m - half, m + half


def assert_estimate(e, mean, low, high, n, abs_tol=1e-9):
    e = e.to_dict() if isinstance(e, Estimate) else e
    assert e["n"] == n
    assert e["mean"] == pytest.approx(mean, abs=abs_tol)
    assert e["low"] == pytest.approx(low, abs=abs_tol, nan_ok=True)
    assert e["high"] == pytest.approx(high, abs=abs_tol, nan_ok=True)


def assert_matches_ref(e, grid, level=0.95, clip=None, abs_tol=1e-7):
    """``e`` is the crossed interval of ``grid`` (optionally cut to ``clip``), by the reference."""
    r = ref_crossed(grid, level)
    low, high = r["low"], r["high"]
    if clip:
        low, high = max(clip[0], low), min(clip[1], high)
    assert_estimate(e, r["mean"], low, high, r["n"], abs_tol)
    return r


def est(mean, low, high, n=3):
    """A hand-made estimate dict."""
    return {"mean": mean, "low": low, "high": high, "n": n}


CLAIMS = [
    "logits-SAM reduces the squeezing of held-out chosen responses in DPO (paper §3, Fig. 1c)",
    "logits-SAM raises DPO's win rate against SFT (Table 1)",
    "logits-SAM raises SLiC-HF's win rate against SFT (Table 1)",
    "logits-SAM raises CPO's win rate against SFT (Table 1)",
    "some ρ of the sweep raises DPO's win rate against SFT (Table 3)",
    "logits-SAM finds flatter solutions (§4.3: lower parameter-Hessian trace)",
    "logits-SAM finds flatter solutions (§4.3: lower logit-Hessian trace)",
    "the squeezing reduction is not just a smaller step (matched-movement control)",
    "the sweep's best ρ, re-run on fresh seeds, raises DPO's win rate against SFT (Table 3, confirmed)",
]


def with_probe_error(mean, low, high, stderrs):
    """A seed t interval widened by the Hutchinson error: half = hypot(t half, 1.96·√(Σ se²)/n), where
    stderrs lists every trace's standard error (both models, every seed) and n = seeds."""
    n = len(stderrs) // 2
    hutch = 1.959964 * math.sqrt(sum(x * x for x in stderrs)) / n
    half = math.hypot(high - mean, hutch)
    return mean, mean - half, mean + half
