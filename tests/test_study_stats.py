"""The study's statistics (stats.py), verdicts and formatting (analysis.py, claims.py) and the whole
analysis on a synthetic study directory whose answers are derived by hand (no model is trained).

Reference values are computed independently: plain percentile bootstraps written here, Student-t
intervals with the t quantiles typed in from a table and the standard deviation from ``statistics``,
and every matched-movement number worked out on paper from linear trajectories.
"""

import itertools
import json
import math
import statistics

import numpy as np
import pytest

from logitsam.study import analysis
from logitsam.study.analysis import _fmt, analyse, verdict
from logitsam.study.claims import SMALLEST_WIN
from logitsam.study.stats import at_level, cluster_bootstrap, head_to_head, on_line, seed_interval, t_quantile

NAN = float("nan")

# two-sided 95% Student-t quantiles (printed tables)
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


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
    assert e["n"] == n
    assert e["mean"] == pytest.approx(mean, abs=abs_tol)
    assert e["low"] == pytest.approx(low, abs=abs_tol)
    assert e["high"] == pytest.approx(high, abs=abs_tol)


# ---------------------------------------------------------------------------------------------------
# cluster_bootstrap
# ---------------------------------------------------------------------------------------------------


def test_cluster_bootstrap_mean_is_nanmean_and_n_is_seeds():
    rng = np.random.default_rng(0)
    grid = rng.normal(size=(4, 25))
    grid[0, 3] = grid[2, 7] = grid[3, 24] = np.nan
    e = cluster_bootstrap(grid.tolist(), resamples=200)
    assert e.mean == pytest.approx(float(np.nanmean(grid)), abs=1e-12)
    assert e.n == 4
    assert e.low < e.mean < e.high


def test_cluster_bootstrap_one_seed_is_the_plain_bootstrap_over_prompts():
    rng = np.random.default_rng(1)
    row = rng.binomial(1, 0.6, size=80).astype(float)  # win/loss outcomes
    e = cluster_bootstrap([row.tolist()])
    m, lo, hi = plain_bootstrap(row)
    assert e.n == 1
    assert e.mean == pytest.approx(m, abs=1e-12)
    assert abs(e.low - lo) < 0.02 and abs(e.high - hi) < 0.02
    # and the textbook normal interval agrees roughly as well
    se = row.std(ddof=1) / math.sqrt(row.size)
    assert abs(e.low - (m - 1.96 * se)) < 0.03 and abs(e.high - (m + 1.96 * se)) < 0.03


def test_cluster_bootstrap_identical_seed_rows_add_no_seed_variance():
    rng = np.random.default_rng(2)
    row = rng.normal(0.3, 0.5, size=60)
    grid = np.tile(row, (5, 1))
    e = cluster_bootstrap(grid.tolist())
    one = cluster_bootstrap([row.tolist()], seed=7)
    m, lo, hi = plain_bootstrap(row)
    assert e.n == 5
    assert e.mean == pytest.approx(m, abs=1e-12)
    for ref_lo, ref_hi in ((lo, hi), (one.low, one.high)):
        assert abs(e.low - ref_lo) < 0.02 and abs(e.high - ref_hi) < 0.02


def test_cluster_bootstrap_seed_shift_widens_the_interval_beyond_pooled_iid():
    rng = np.random.default_rng(3)
    base = rng.normal(0.0, 0.3, size=30)
    offsets = np.array([-1.0, 0.0, 1.0, 2.0, -2.0])
    grid = base[None, :] + offsets[:, None]
    e = cluster_bootstrap(grid.tolist())
    _, plo, phi = plain_bootstrap(grid)  # all S·P cells as independent
    assert e.mean == pytest.approx(float(grid.mean()), abs=1e-12)
    assert (e.high - e.low) > 2.5 * (phi - plo)
    # the seed means are −1..2 around 0: the interval must reach well past the pooled one on both sides
    assert e.low < plo - 0.3 and e.high > phi + 0.3


def test_cluster_bootstrap_leaves_nan_cells_out():
    rng = np.random.default_rng(4)
    grid = rng.normal(1.0, 1.0, size=(3, 40))
    holes = grid.copy()
    holes[0, 5] = holes[1, 17] = holes[2, 30] = np.nan
    e = cluster_bootstrap(holes.tolist())
    kept = grid[~np.isnan(holes)]
    assert e.mean == pytest.approx(float(kept.mean()), abs=1e-12)
    assert math.isfinite(e.low) and math.isfinite(e.high) and e.low < e.mean < e.high
    # a prompt missing for every seed is the same as a grid without it (mean exactly, interval closely)
    with_dead = np.concatenate([grid, np.full((3, 1), np.nan)], axis=1)
    a, b = cluster_bootstrap(with_dead.tolist()), cluster_bootstrap(grid.tolist())
    assert a.mean == pytest.approx(b.mean, abs=1e-12)
    assert abs(a.low - b.low) < 0.05 and abs(a.high - b.high) < 0.05


def test_cluster_bootstrap_degenerate_grids():
    for grid in ([], [[]], [[NAN, NAN], [NAN, NAN]], [[NAN]]):
        e = cluster_bootstrap(grid, resamples=50)
        assert e.n == 0 and math.isnan(e.mean) and math.isnan(e.low) and math.isnan(e.high)
    # a constant grid: a zero-width interval at the constant
    e = cluster_bootstrap([[0.5] * 4] * 3, resamples=50)
    assert (e.mean, e.low, e.high, e.n) == (0.5, 0.5, 0.5, 3)
    # one observed cell: resamples that miss it are dropped, not NaN
    e = cluster_bootstrap([[1.0, NAN]], resamples=200)
    assert (e.mean, e.low, e.high, e.n) == (1.0, 1.0, 1.0, 1)


def test_cluster_bootstrap_n_counts_only_seeds_with_data():
    grid = [[0.6, 0.7, 0.8, 0.9], [NAN, NAN, NAN, NAN]]
    e = cluster_bootstrap(grid, resamples=200)
    assert e.mean == pytest.approx(0.75)
    assert e.n == 1


def test_cluster_bootstrap_is_reproducible_by_seed():
    grid = np.random.default_rng(5).normal(size=(3, 10)).tolist()
    assert cluster_bootstrap(grid, resamples=300, seed=1) == cluster_bootstrap(grid, resamples=300, seed=1)
    assert cluster_bootstrap(grid, resamples=300, seed=1) != cluster_bootstrap(grid, resamples=300, seed=2)


def test_cluster_bootstrap_coverage_under_two_way_random_effects():
    """y[s,p] = μ + a_s + b_p + ε: the two-way bootstrap covers μ about as often as promised, the
    pooled iid interval (what the demo did) does not."""
    rng = np.random.default_rng(2024)
    mu, seeds, prompts, reps = 1.0, 8, 40, 100
    covered = naive = 0
    for r in range(reps):
        grid = (
            mu
            + rng.normal(0, 0.5, size=(seeds, 1))
            + rng.normal(0, 0.5, size=(1, prompts))
            + rng.normal(0, 0.5, size=(seeds, prompts))
        )
        e = cluster_bootstrap(grid, resamples=300, seed=r)
        covered += e.low <= mu <= e.high
        half = 1.96 * grid.std(ddof=1) / math.sqrt(grid.size)
        naive += abs(grid.mean() - mu) <= half
    assert 0.80 <= covered / reps <= 1.0
    assert naive / reps < 0.6  # the pooled interval badly under-covers


# ---------------------------------------------------------------------------------------------------
# seed_interval, t_quantile
# ---------------------------------------------------------------------------------------------------


def test_seed_interval_hand_values():
    e = seed_interval([1.0, 2.0, 3.0])
    half = 4.303 * 1.0 / math.sqrt(3)
    assert_estimate(e.to_dict(), 2.0, 2.0 - half, 2.0 + half, 3)
    # NaNs are dropped (n counts only the values)
    assert seed_interval([1.0, NAN, 2.0, 3.0]) == e
    # two values: t with 1 df
    e2 = seed_interval([0.0, 1.0])
    half2 = 12.706 * math.sqrt(0.5) / math.sqrt(2)
    assert_estimate(e2.to_dict(), 0.5, 0.5 - half2, 0.5 + half2, 2)
    # identical values: zero width
    assert seed_interval([0.25, 0.25, 0.25]).to_dict() == {"mean": 0.25, "low": 0.25, "high": 0.25, "n": 3}


def test_seed_interval_one_or_no_value():
    e = seed_interval([NAN, 1.5])
    assert e.mean == 1.5 and e.n == 1 and math.isnan(e.low) and math.isnan(e.high)
    for vals in ([], [NAN, NAN]):
        e = seed_interval(vals)
        assert e.n == 0 and math.isnan(e.mean)


def test_t_quantile_table_and_expansion():
    for df, t in T_TABLE.items():
        assert t_quantile(df) == pytest.approx(t, abs=5e-4)
    for df, t in ((11, 2.201), (12, 2.179), (15, 2.131), (20, 2.086), (30, 2.042), (60, 2.000), (120, 1.980)):
        assert abs(t_quantile(df) - t) < 0.003, df
    assert abs(t_quantile(10**6) - 1.95996) < 1e-4
    # decreasing in df
    qs = [t_quantile(d) for d in range(1, 200)]
    assert all(a > b for a, b in itertools.pairwise(qs))
    assert math.isnan(t_quantile(0)) and math.isnan(t_quantile(-3))


def test_estimate_excludes():
    from logitsam.study.stats import Estimate

    assert Estimate(0.5, 0.1, 0.9, 3).excludes(0.0) == 1
    assert Estimate(-0.5, -0.9, -0.1, 3).excludes(0.0) == -1
    assert Estimate(0.5, 0.0, 0.9, 3).excludes(0.0) == 0  # touching is not excluding
    assert Estimate(0.5, NAN, NAN, 1).excludes(0.0) == 0


# ---------------------------------------------------------------------------------------------------
# head_to_head, at_level, on_line
# ---------------------------------------------------------------------------------------------------


def test_head_to_head_cells():
    a = [[1.0, 2.0, 3.0, NAN], [0.0, 5.0, NAN, 1.0]]
    b = [[0.0, 2.0, 4.0, 1.0], [0.0, 4.0, 1.0, NAN]]
    out = head_to_head(a, b)
    want = [[1.0, 0.5, 0.0, NAN], [0.5, 1.0, NAN, NAN]]
    np.testing.assert_array_equal(np.array(out), np.array(want))
    # antisymmetry: b vs a is 1 − (a vs b) where defined
    back = np.array(head_to_head(b, a))
    np.testing.assert_array_equal(back, 1 - np.array(want))
    with pytest.raises(ValueError):
        head_to_head([[1.0, 2.0]], [[1.0]])
    with pytest.raises(ValueError):
        head_to_head([[1.0]], [[1.0], [2.0]])


def test_at_level_interpolates_on_a_decreasing_trajectory():
    xs, ys = [0.0, -1.0, -2.0, -3.0], [0.0, 10.0, 20.0, 30.0]
    assert at_level(xs, ys, -1.5) == pytest.approx(15.0)
    assert at_level(xs, ys, -0.25) == pytest.approx(2.5)
    assert at_level(xs, ys, -2.9) == pytest.approx(29.0)
    # exact hits: the start, an interior point, the last point
    assert at_level(xs, ys, 0.0) == 0.0
    assert at_level(xs, ys, -2.0) == 20.0
    assert at_level(xs, ys, -3.0) == 30.0
    # never reached (either side)
    assert math.isnan(at_level(xs, ys, -3.5))
    assert math.isnan(at_level(xs, ys, 0.5))
    # increasing trajectories too
    assert at_level([0.0, 2.0], [1.0, 5.0], 0.5) == pytest.approx(2.0)


def test_at_level_takes_the_first_crossing():
    xs, ys = [0.0, -2.0, 0.0, -4.0], [0.0, 2.0, 4.0, 6.0]
    # −1 is crossed three times (y = 1, 3, 4.5): the first one counts
    assert at_level(xs, ys, -1.0) == pytest.approx(1.0)
    # −3 only on the last segment
    assert at_level(xs, ys, -3.0) == pytest.approx(5.5)
    # touching the level and turning back counts as reaching it
    assert at_level([0.0, -1.0, 0.0, -2.0], [0.0, 7.0, 0.0, 9.0], -1.0) == 7.0


def test_at_level_skips_nan_points_and_handles_short_inputs():
    assert at_level([0.0, NAN, -2.0], [0.0, 100.0, 20.0], -1.0) == pytest.approx(10.0)
    assert at_level([0.0, -1.0, -2.0], [0.0, NAN, 20.0], -0.5) == pytest.approx(5.0)
    assert at_level([-1.0], [5.0], -1.0) == 5.0
    assert math.isnan(at_level([-1.0], [5.0], -2.0))
    assert math.isnan(at_level([], [], 0.0))
    assert math.isnan(at_level([NAN, NAN], [1.0, 2.0], 0.0))
    with pytest.raises(ValueError):
        at_level([0.0, 1.0], [0.0], 0.5)


def test_on_line():
    assert on_line(0.0, 0.0, 2.0, 4.0, 1.0) == (pytest.approx(2.0), True)
    assert on_line(2.0, 4.0, 0.0, 0.0, 1.0) == (pytest.approx(2.0), True)  # order of the points does not matter
    assert on_line(0.0, 0.0, 2.0, 4.0, 0.0) == (0.0, True)
    assert on_line(0.0, 0.0, 2.0, 4.0, 2.0) == (4.0, True)
    y, inside = on_line(0.0, 0.0, 2.0, 4.0, 3.0)
    assert y == pytest.approx(6.0) and inside is False
    y, inside = on_line(1.0, 1.0, 2.0, 0.0, -1.0)
    assert y == pytest.approx(3.0) and inside is False
    # both points at the same x: only that x has a value (their mean)
    assert on_line(1.0, 2.0, 1.0, 4.0, 1.0) == (3.0, True)
    y, inside = on_line(1.0, 2.0, 1.0, 4.0, 1.5)
    assert math.isnan(y) and inside is False


# ---------------------------------------------------------------------------------------------------
# verdict, _fmt
# ---------------------------------------------------------------------------------------------------


def _e(mean, low, high, n=3):
    return {"mean": mean, "low": low, "high": high, "n": n}


def test_verdict_rules():
    assert verdict(_e(0.2, 0.1, 0.3), 0.0, +1) == "reproduced"
    assert verdict(_e(-0.2, -0.3, -0.1), 0.0, +1) == "not reproduced"
    assert verdict(_e(0.1, -0.1, 0.3), 0.0, +1) == "inconclusive"
    assert verdict(_e(0.1, 0.0, 0.3), 0.0, +1) == "inconclusive"  # touching the null
    assert verdict(_e(-0.2, -0.3, -0.1), 0.0, -1) == "reproduced"
    assert verdict(_e(0.2, 0.1, 0.3), 0.0, -1) == "not reproduced"
    assert verdict(_e(0.0, -0.1, 0.1), 0.0, -1) == "inconclusive"
    # not measured: nothing, one seed, no interval
    assert verdict({}, 0.0, +1) == "not measured"
    assert verdict(_e(0.2, 0.1, 0.3, n=1), 0.0, +1) == "not measured"
    assert verdict(_e(0.2, NAN, NAN, n=2), 0.0, +1) == "not measured"
    assert verdict(_e(NAN, NAN, NAN, n=0), 0.0, +1) == "not measured"


def test_verdict_smallest_effect():
    # a win-rate interval around 50% entirely short of +2.3 pp: the claimed gain is ruled out
    assert verdict(_e(0.49, 0.45, 0.52), 0.5, +1, SMALLEST_WIN) == "not reproduced"
    assert verdict(_e(0.49, 0.45, 0.53), 0.5, +1, SMALLEST_WIN) == "inconclusive"
    assert verdict(_e(0.49, 0.45, SMALLEST_WIN), 0.5, +1, SMALLEST_WIN) == "inconclusive"  # reaching it
    assert verdict(_e(0.4, 0.3, 0.45), 0.5, +1, SMALLEST_WIN) == "not reproduced"
    # excluding the null on the claimed side takes precedence over the smallest effect
    assert verdict(_e(0.51, 0.505, 0.515), 0.5, +1, SMALLEST_WIN) == "reproduced"
    assert verdict(_e(0.6, 0.55, 0.65), 0.5, +1, SMALLEST_WIN) == "reproduced"
    # direction −1 mirrors it
    assert verdict(_e(0.01, -0.01, 0.05), 0.0, -1, -0.02) == "not reproduced"
    assert verdict(_e(0.01, -0.03, 0.05), 0.0, -1, -0.02) == "inconclusive"
    assert abs(SMALLEST_WIN - 0.523) < 1e-12


def test_fmt_rules():
    for e in ({}, _e(NAN, NAN, NAN, 0), _e(1.0, 0.0, 2.0, 0), _e(NAN, 0.0, 1.0, 3)):
        assert _fmt(e) == "–" and _fmt(e, pct=True) == "–"
    assert _fmt(_e(0.5234, 0.4, 0.6), pct=True) == "52.3 [40.0, 60.0]"
    assert _fmt(_e(1.234, -0.5, 3.0)) == "+1.23 [-0.50, +3.00]"
    assert _fmt(_e(1.234, -0.5, 3.0), digits=1) == "+1.2 [-0.5, +3.0]"
    # every value would print as ±0.00: three significant digits instead
    assert _fmt(_e(0.001234, 0.0004, 0.002)) == "+0.00123 [+0.0004, +0.002]"
    assert _fmt(_e(-0.001234, -0.002, -0.0004)) == "-0.00123 [-0.002, -0.0004]"
    assert _fmt(_e(0.0, 0.0, 0.0)) == "+0.00 [+0.00, +0.00]"
    # one seed: no interval
    assert _fmt(_e(1.234, NAN, NAN, 1)) == "+1.23 (1 seed)"
    assert _fmt(_e(0.5234, NAN, NAN, 1), pct=True) == "52.3 (1 seed)"
    assert _fmt(_e(0.001, NAN, NAN, 1)) == "+0.001 (1 seed)"


# ---------------------------------------------------------------------------------------------------
# analyse() on a synthetic study directory
# ---------------------------------------------------------------------------------------------------

KEY = "synthetic-key"
SEEDS = (2, 3, 4)
STEPS = (0, 10, 20, 30, 40)
BASE_REWARD = [0.1, 0.3, 0.5, 0.2, 0.4, 0.6]  # mean 0.35
KL_SHAPE = [-0.1, 0.1, 0.0, 0.2, -0.2, 0.0]  # mean 0

# DPO: Δ− = −a·t, Δ+ = −a·t/2 (t = step/10); final Δ+ = −2a, Δ− = −4a, margin Δ+ − Δ− = a·t/2
A = {2: 1.0, 3: 1.2, 4: 0.8}
# DPO + logits-SAM: final Δ+ 0.9 / 1.0 / 1.1 above DPO's; final Δ− chosen inside DPO's range
SAM_C = {2: -1.1, 3: -1.4, 4: -0.5}
SAM_R = {2: -2.5, 3: -3.0, 4: -1.4}
# DPO at half the learning rate (seeds 2 and 3 only: unfinished)
SMALL_C = {2: -1.0, 3: -1.3}
SMALL_R = {2: -2.0, 3: -2.5}
KL = {"dpo": {2: 2.0, 3: 2.2, 4: 1.8}, "dpo+lsam(1e-1)": {2: 1.5, 3: 2.5, 4: 1.4}, "dpo(lr×0.5)": {2: 1.0, 3: 1.2}}
REWARD_OFFSET = {2: 0.0, 3: 0.1, 4: -0.1}
REWARD_SHIFT = {"dpo": 0.0, "dpo+lsam(1e-1)": 0.05, "dpo(lr×0.5)": -0.1}
HESSIAN = {
    "dpo": {"parameter_hessian": {2: 10.0, 3: 12.0, 4: 11.0}, "logit_hessian": {2: 3.0, 3: 3.2, 4: 2.8}},
    "dpo+lsam(1e-1)": {"parameter_hessian": {2: 8.0, 3: 9.0, 4: 9.5}, "logit_hessian": {2: 2.0, 3: 2.1, 4: 1.9}},
}
VS_SFT = {
    "dpo": [1.0, 0.0, 1.0, 0.5, NAN, 1.0],
    "dpo+lsam(1e-1)": [1.0, 1.0, 1.0, 0.5, 1.0, NAN],
    "dpo(lr×0.5)": [0.0, 0.0, 1.0, 0.5, 1.0, 1.0],
}
VS_CHOSEN = {"dpo": [1.0, 0.0, 0.0, 1.0], "dpo+lsam(1e-1)": [1.0, 1.0, 0.0, 1.0], "dpo(lr×0.5)": [0.0, 0.0, 0.5, 1.0]}


def _trajectory(label, seed):
    """(Δ+, Δ−, top-token mass) at STEPS."""
    t = [s / 10 for s in STEPS]
    if label == "dpo":
        a = A[seed]
        return [-0.5 * a * x for x in t], [-a * x for x in t], [0.3 + 0.01 * x for x in t]
    if label == "dpo+lsam(1e-1)":
        c = [SAM_C[seed] * x / 4 for x in t]
        c[2] -= 1.0  # a dip half-way: the minimum is not the final value
        return c, [SAM_R[seed] * x / 4 for x in t], [0.3 + 0.005 * x for x in t]
    return [SMALL_C[seed] * x / 4 for x in t], [SMALL_R[seed] * x / 4 for x in t], [0.3 + 0.002 * x for x in t]


def _record(label, seed, key=KEY, reward_shift=None):
    c, r, top = _trajectory(label, seed)
    log = []
    for i, step in enumerate(STEPS):
        log.append(
            {
                "step": step,
                "eval_loss": 0.69 - 0.01 * i,
                "eval_logps/chosen_drift": c[i],
                "eval_logps/rejected_drift": r[i],
                "eval_probs/top_token": top[i],
            }
        )
        if step:  # training records between evaluations carry no held-out metrics
            log.append({"step": step, "loss": 0.6, "learning_rate": 1e-5})
    shift = REWARD_SHIFT[label] if reward_shift is None else reward_shift
    rec = {
        "key": key,
        "spec": {
            "name": f"{label}/s{seed}",
            "loss": "dpo",
            "rho": 0.1 if "lsam" in label else 0.0,
            "mode": "logits",
            "seed": seed,
            "params": {},
            "lr_scale": 0.5 if "×0.5" in label else 1.0,
        },
        "method": label,
        "samples": [f"sample {p}" for p in range(6)],
        "rewards": [b + REWARD_OFFSET[seed] + shift for b in BASE_REWARD],
        "outcomes_vs_sft": VS_SFT[label],
        "outcomes_vs_chosen": VS_CHOSEN[label],
        "kl_values": [KL[label][seed] + k for k in KL_SHAPE],
        "log": log,
        "final_metrics": {"eval_logps/chosen_drift": c[-1]},
        "seconds": 1.0,
    }
    if label in HESSIAN:
        rec["hessian"] = {
            kind: {"trace": HESSIAN[label][kind][seed], "stderr": 0.1, "probes": 8}
            for kind in ("parameter_hessian", "logit_hessian")
        } | {"pairs": 4}
    return rec


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def _shared(seeds=SEEDS):
    prompts = [f"prompt {p}" for p in range(6)]
    return {
        "key": KEY,
        "settings": {"seeds": list(seeds), "model": "synthetic"},
        "description": "a synthetic study",
        "tuning": "none",
        "pairs": {"train": 10, "heldout": 4},
        "prompts": prompts,
        "chosen_prompts": prompts[:4],
        "sft_samples": [f"sft {p}" for p in range(6)],
        "sft_rewards": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
        "sft_vs_chosen": [1.0, 0.0, 0.5, NAN],
    }


def build_study(root, runs=None, seeds=SEEDS):
    """A study directory; ``runs``: {label: seeds} (default: the three configurations above)."""
    runs = runs or {"dpo": SEEDS, "dpo+lsam(1e-1)": SEEDS, "dpo(lr×0.5)": (2, 3)}
    _write(root / "shared.json", _shared(seeds))
    for label, ss in runs.items():
        for s in ss:
            _write(root / "runs" / f"{label}_s{s}" / "record.json", _record(label, s))
    return str(root)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    out = build_study(root)
    # records of other study settings: sorted after the real ones (would overwrite seed 2) and a new seed
    _write(root / "runs" / "zz_stale_dpo_s2" / "record.json", _record("dpo", 2, key="old", reward_shift=100.0))
    _write(root / "runs" / "zz_stale_dpo_s9" / "record.json", _record("dpo", 2, key="old") | {"spec": {"seed": 9}})
    return out, analyse(out)


def test_analyse_loads_only_records_of_this_study(study):
    _, res = study
    assert list(res["configs"]) == ["dpo", "dpo+lsam(1e-1)", "dpo(lr×0.5)"]  # the plan's order
    assert res["configs"]["dpo"]["seeds"] == [2, 3, 4]
    assert res["configs"]["dpo(lr×0.5)"]["seeds"] == [2, 3]
    assert res["configs"]["dpo"]["reward"]["mean"] == pytest.approx(0.35)  # the stale +100 is ignored
    assert res["planned_seeds"] == [2, 3, 4]
    assert (res["prompts"], res["chosen_prompts"]) == (6, 4)
    assert res["pairs"] == {"train": 10, "heldout": 4}
    assert res["configs"]["dpo+lsam(1e-1)"]["plain"] == "dpo"
    assert res["configs"]["dpo"]["plain"] is None


def test_analyse_configuration_rows(study):
    _, res = study
    dpo, sam = res["configs"]["dpo"], res["configs"]["dpo+lsam(1e-1)"]
    # grid means over seeds × prompts, NaN outcomes left out
    vs_sft = np.array([VS_SFT["dpo"]] * 3)
    assert dpo["win_vs_sft"]["mean"] == pytest.approx(float(np.nanmean(vs_sft)))  # 3.5 / 5
    assert dpo["win_vs_sft"]["mean"] == pytest.approx(0.7)
    assert sam["win_vs_sft"]["mean"] == pytest.approx(0.9)
    assert dpo["win_vs_chosen"]["mean"] == pytest.approx(0.5)
    assert sam["reward"]["mean"] == pytest.approx(0.40)
    assert dpo["kl"]["mean"] == pytest.approx(2.0)
    assert sam["kl"]["mean"] == pytest.approx((1.5 + 2.5 + 1.4) / 3)
    for row in (dpo, sam):
        for k in ("win_vs_sft", "reward", "kl"):
            assert row[k]["n"] == 3 and row[k]["low"] <= row[k]["mean"] <= row[k]["high"]
    # held-out measures: t over seeds
    assert_estimate(dpo["chosen_drift_final"], *t_interval([-2.0, -2.4, -1.6], 4.303), 3)
    assert_estimate(dpo["rejected_drift_final"], *t_interval([-4.0, -4.8, -3.2], 4.303), 3)
    assert_estimate(dpo["chosen_drift_min"], *t_interval([-2.0, -2.4, -1.6], 4.303), 3)
    assert_estimate(sam["chosen_drift_final"], *t_interval([-1.1, -1.4, -0.5], 4.303), 3)
    assert_estimate(sam["chosen_drift_min"], *t_interval([-1.55, -1.7, -1.25], 4.303), 3)  # the dip
    assert dpo["top_token_final"]["mean"] == pytest.approx(0.34)
    assert dpo["top_token_final"]["low"] == pytest.approx(0.34)  # same on every seed
    small = res["configs"]["dpo(lr×0.5)"]
    assert_estimate(small["chosen_drift_final"], *t_interval([-1.0, -1.3], 12.706), 2)
    # Hessian traces
    assert dpo["logit_hessian"]["by_seed"] == {
        s: {"trace": HESSIAN["dpo"]["logit_hessian"][s], "stderr": 0.1, "probes": 8} for s in SEEDS
    }
    assert_estimate(dpo["parameter_hessian"]["mean"], *t_interval([10.0, 12.0, 11.0], 4.303), 3)
    assert "logit_hessian" not in small
    # SFT: one "seed"
    assert res["sft"]["win_vs_chosen"]["mean"] == pytest.approx(0.5) and res["sft"]["win_vs_chosen"]["n"] == 1
    assert res["sft"]["reward"]["mean"] == pytest.approx(0.25)


def test_analyse_paired_comparisons(study):
    _, res = study
    p = res["paired"]["dpo+lsam(1e-1)"]
    assert p["against"] == "dpo" and p["seeds"] == [2, 3, 4]
    # SAM's reward is higher on every prompt of every seed: it wins every head-to-head
    assert p["win"] == {"mean": 1.0, "low": 1.0, "high": 1.0, "n": 3}
    assert_estimate(p["chosen_drift_diff"], *t_interval([0.9, 1.0, 1.1], 4.303), 3)
    assert p["chosen_drift_diff"]["low"] == pytest.approx(1.0 - 4.303 * 0.1 / math.sqrt(3))
    assert_estimate(p["rejected_drift_diff"], *t_interval([1.5, 1.8, 1.8], 4.303), 3)
    assert_estimate(p["top_token_diff"], -0.02, -0.02, -0.02, 3)
    assert_estimate(p["kl_diff"], *t_interval([-0.5, 0.3, -0.4], 4.303), 3)
    assert_estimate(p["reward_diff"], 0.05, 0.05, 0.05, 3)
    assert_estimate(p["parameter_hessian_diff"], *t_interval([-2.0, -3.0, -1.5], 4.303), 3)
    assert_estimate(p["logit_hessian_diff"], *t_interval([-1.0, -1.1, -0.9], 4.303), 3)
    # the half-step run: only the seeds both have; it loses every head-to-head
    q = res["paired"]["dpo(lr×0.5)"]
    assert q["against"] == "dpo" and q["seeds"] == [2, 3]
    assert q["win"]["mean"] == 0.0 and q["win"]["n"] == 2
    assert_estimate(q["chosen_drift_diff"], *t_interval([1.0, 1.1], 12.706), 2)
    assert "logit_hessian_diff" not in q  # the half-step run has no Hessian
    assert "dpo" not in res["paired"]


def test_analyse_matched_movement(study):
    _, res = study
    mm = res["matched_movement"]
    assert mm["seeds"] == [2, 3, 4]
    # DPO's Δ+ where its Δ− reaches SAM's final Δ−: Δ+ = Δ−/2 on DPO's line → SAM Δ+ − Δ−_SAM/2
    #   s2: −1.1 − (−2.5/2) = 0.15; s3: −1.4 + 1.5 = 0.1; s4: −0.5 + 0.7 = 0.2
    assert_estimate(mm["equal_rejected"], *t_interval([0.15, 0.1, 0.2], 4.303), 3)
    assert mm["equal_rejected"]["mean"] == pytest.approx(0.15)
    assert mm["equal_rejected_seeds"] == 3
    # at SAM's final margin m = Δ+ − Δ−: DPO's margin is −Δ+, so DPO's Δ+ there is −m → Δ+_SAM + m
    #   s2: −1.1 + 1.4 = 0.3; s3: −1.4 + 1.6 = 0.2; s4: −0.5 + 0.9 = 0.4
    assert_estimate(mm["equal_margin"], *t_interval([0.3, 0.2, 0.4], 4.303), 3)
    # at SAM's KL on the line through (KL, Δ+) of DPO(lr×0.5) and DPO, seeds with both (2, 3):
    #   s2: line (1.0, −1.0)–(2.0, −2.0) at 1.5 → −1.5; −1.1 + 1.5 = 0.4 (bracketed)
    #   s3: line (1.2, −1.3)–(2.2, −2.4) at 2.5 → −2.73; −1.4 + 2.73 = 1.33 (extrapolated)
    assert_estimate(mm["equal_kl"], *t_interval([0.4, 1.33], 12.706), 2)
    assert mm["equal_kl_seeds"] == 2
    assert mm["equal_kl_bracketed"] == {"seeds_bracketed": 1, "of": 2}
    #   rewards: s2 line (1.0, 0.25)–(2.0, 0.35) at 1.5 → 0.30, SAM 0.40 → 0.10;
    #            s3 line (1.2, 0.35)–(2.2, 0.45) at 2.5 → 0.48, SAM 0.50 → 0.02
    assert_estimate(mm["reward_at_equal_kl"], *t_interval([0.10, 0.02], 12.706), 2)
    v = mm["vs_small_step"]
    assert v["seeds"] == [2, 3] and v["win"]["mean"] == 1.0
    assert v["chosen_drift_diff"]["mean"] == pytest.approx(-0.1)


def test_analyse_claims(study):
    _, res = study
    by = {c["claim"]: c for c in res["claims"]}
    assert len(by) == len(res["claims"]) == 8  # every claim is listed, measured or not

    def find(prefix):
        (c,) = [c for claim, c in by.items() if claim.startswith(prefix)]
        return c

    squeeze = find("logits-SAM reduces the squeezing")
    assert squeeze["verdict"] == "reproduced"
    assert "+1.00 [+0.75, +1.25]" in squeeze["evidence"] and "3 seeds" in squeeze["evidence"]
    win = find("logits-SAM raises DPO's win rate")
    assert win["verdict"] == "reproduced" and "100.0 [100.0, 100.0]%" in win["evidence"]
    for name in ("SLiC-HF", "CPO"):
        c = find(f"logits-SAM raises {name}'s win rate")
        assert c["verdict"] == "not measured" and c["evidence"].startswith("runs missing")
    for kind in ("parameter", "logit"):
        assert find(f"logits-SAM finds flatter solutions (§4.3: lower {kind}")["verdict"] == "reproduced"
    matched = find("the squeezing reduction is not just a smaller step")
    assert matched["verdict"] == "reproduced"
    assert "3 of 3 seeds" in matched["evidence"]
    assert find("some ρ of the sweep")["verdict"] == "not measured"  # one ρ only


def test_analyse_claim_verdicts_follow_the_data(tmp_path):
    """SAM's reward below DPO's everywhere and its Δ+ below DPO's: the same claims come out reversed."""
    out = build_study(tmp_path, runs={"dpo": SEEDS})
    for s in SEEDS:
        rec = _record("dpo+lsam(1e-1)", s, reward_shift=-0.05)
        for r in rec["log"]:
            if "eval_loss" in r:
                r["eval_logps/chosen_drift"] = 2 * _trajectory("dpo", s)[0][STEPS.index(r["step"])] - 0.1 * s
        _write(tmp_path / "runs" / f"dpo+lsam(1e-1)_s{s}" / "record.json", rec)
    res = analyse(out)
    p = res["paired"]["dpo+lsam(1e-1)"]
    assert p["win"] == {"mean": 0.0, "low": 0.0, "high": 0.0, "n": 3}
    # Δ+ differences: final 2·(−2a) − 0.1 s − (−2a) = −2a − 0.1 s = −2.2, −2.7, −2.0
    assert_estimate(p["chosen_drift_diff"], *t_interval([-2.2, -2.7, -2.0], 4.303), 3)
    v = {c["claim"].split(" (")[0]: c["verdict"] for c in res["claims"]}
    assert v["logits-SAM reduces the squeezing of held-out chosen responses in DPO"] == "not reproduced"
    assert v["logits-SAM raises DPO's win rate"] == "not reproduced"
    assert res["matched_movement"]["seeds"] == [2, 3, 4]
    assert "equal_kl" not in res["matched_movement"]  # no half-step runs


def test_analyse_one_seed_is_not_measured(tmp_path):
    out = build_study(tmp_path, runs={"dpo": (2,), "dpo+lsam(1e-1)": (2,)})
    res = analyse(out)
    p = res["paired"]["dpo+lsam(1e-1)"]
    assert p["seeds"] == [2] and p["win"]["mean"] == 1.0 and p["win"]["n"] == 1
    assert p["chosen_drift_diff"]["mean"] == pytest.approx(0.9) and math.isnan(p["chosen_drift_diff"]["low"])
    assert {c["verdict"] for c in res["claims"]} == {"not measured"}


def test_trajectory_and_final_use_evaluation_records_only():
    rec = _record("dpo", 3)
    steps, vals = analysis.trajectory(rec, "eval_logps/chosen_drift")
    assert steps == list(STEPS)
    assert vals == pytest.approx([0.0, -0.6, -1.2, -1.8, -2.4])
    assert analysis.final(rec, "eval_logps/rejected_drift") == pytest.approx(-4.8)
    assert math.isnan(analysis.final({"log": [{"step": 1, "loss": 0.5}]}, "eval_logps/chosen_drift"))


# ---------------------------------------------------------------------------------------------------
# report.md, results.json and the plots
# ---------------------------------------------------------------------------------------------------


def test_write_study_report_on_the_synthetic_study(tmp_path):
    from logitsam.study.study_report import PNG, write_study_report

    out = build_study(tmp_path)
    text = write_study_report(out)
    assert "- **reproduced** — logits-SAM reduces the squeezing" in text  # the claims, one line each
    assert len(text.splitlines()) == 8
    res = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert res["paired"]["dpo+lsam(1e-1)"]["win"]["mean"] == 1.0
    assert [c["verdict"] for c in res["claims"]] == [c["verdict"] for c in analyse(out)["claims"]]
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "## Claims" in md and "**reproduced** — logits-SAM reduces the squeezing" in md
    assert "| dpo+lsam(1e-1) | 3 |" in md and "100.0 [100.0, 100.0] vs dpo" in md
    assert "Unfinished: dpo(lr×0.5) have fewer than the planned 3 seeds." in md
    for name in PNG.values():
        png = tmp_path / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, name
        assert f"]({name})" in md


# ---------------------------------------------------------------------------------------------------
# configurations finished on different seeds (seeds are not part of the study key, so
# `logitsam study --groups dpo --seeds 2` then `--groups dpo-small-step --seeds 3` into one directory)
# ---------------------------------------------------------------------------------------------------


def test_analyse_with_no_common_seed_between_sam_and_dpo(tmp_path):
    out = build_study(tmp_path, runs={"dpo": (2,), "dpo+lsam(1e-1)": (3,)})
    res = analyse(out)
    assert "dpo+lsam(1e-1)" not in res["paired"]  # nothing to pair: no comparison, not an empty one
    assert {c["verdict"] for c in res["claims"]} == {"not measured"}


def test_write_study_report_with_no_common_seed_for_the_half_step_control(tmp_path):
    from logitsam.study.study_report import write_study_report

    out = build_study(tmp_path, runs={"dpo": (2,), "dpo(lr×0.5)": (3,)}, seeds=(2,))
    write_study_report(out)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| dpo(lr×0.5) | 1 |" in md
