"""The study's statistics (experiments/stats.py), continued: the cluster bootstrap, seed intervals, t
quantiles, estimate helpers and the trajectory helpers (head_to_head, at_level, on_line), against
independent references (tests/stats_reference.py)."""

import itertools
import math

import numpy as np
import pytest

from experiments.stats import (
    Estimate,
    at_level,
    clip,
    cluster_bootstrap,
    crossed_interval,
    head_to_head,
    on_line,
    seed_interval,
    t_quantile,
)
from experiments.verdicts import _fmt
from stats_reference import (
    NAN,
    T_TABLE,
    assert_estimate,
    plain_bootstrap,
    t_interval,
)

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


@pytest.mark.slow
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


@pytest.mark.slow
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
    # four values: t with 3 df
    assert_estimate(seed_interval([0.1, 0.4, 0.2, 0.7]), *t_interval([0.1, 0.4, 0.2, 0.7], 3.182), 4)


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
    assert Estimate(0.5, 0.1, 0.9, 3).excludes(0.0) == 1
    assert Estimate(-0.5, -0.9, -0.1, 3).excludes(0.0) == -1
    assert Estimate(0.5, 0.0, 0.9, 3).excludes(0.0) == 0  # touching is not excluding
    assert Estimate(0.5, NAN, NAN, 1).excludes(0.0) == 0
    assert Estimate(0.5, 0.4, 0.6, 3).excludes(0.45) == 0 and Estimate(0.5, 0.4, 0.6, 3).excludes(0.7) == -1


def test_clip_cuts_the_interval_not_the_mean():
    assert clip(Estimate(0.9, 0.62, 1.18, 3), 0.0, 1.0) == Estimate(0.9, 0.62, 1.0, 3)
    assert clip(Estimate(0.1, -0.3, 0.5, 3), 0.0, 1.0) == Estimate(0.1, 0.0, 0.5, 3)
    assert clip(Estimate(0.0, -1.4, 1.2, 2), -1.0, 1.0) == Estimate(0.0, -1.0, 1.0, 2)
    assert clip(Estimate(0.3, 0.1, 0.4, 3), 0.0, 1.0) == Estimate(0.3, 0.1, 0.4, 3)  # inside: unchanged


def test_clip_keeps_a_missing_interval_missing():
    e = clip(Estimate(0.5, NAN, NAN, 1), 0.0, 1.0)  # one cell: a mean, no interval
    assert e.mean == 0.5 and e.n == 1 and math.isnan(e.low) and math.isnan(e.high)
    assert _fmt(e.to_dict(), pct=True) == "50.0 (1 seed)"
    e = clip(crossed_interval([[NAN, 1.0], [NAN, NAN]]), 0.0, 1.0)
    assert math.isnan(e.low) and math.isnan(e.high)


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
