"""The study's statistics (experiments/stats.py) against independent references (tests/stats_reference.py):
the crossed random-effects interval and Student-t quantiles (the cluster bootstrap, seed intervals and
trajectory helpers: test_bootstrap_and_seeds.py).
"""

import itertools
import math

import mpmath
import numpy as np
import pytest

from experiments.stats import (
    Estimate,
    _betainc,
    crossed_interval,
    t_quantile,
    t_quantile_at,
)
from stats_reference import (
    NAN,
    T1,
    T2,
    T_TABLE,
    assert_estimate,
    assert_matches_ref,
    ref_crossed,
    ref_t,
    t_interval,
)

# ---------------------------------------------------------------------------------------------------
# the references themselves
# ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_reference_t_quantile_against_printed_tables_and_closed_forms():
    for df, t in T_TABLE.items():
        assert ref_t(df) == pytest.approx(t, abs=5e-4)
    assert ref_t(1, 0.9) == pytest.approx(math.tan(0.45 * math.pi), rel=1e-10)  # Cauchy
    assert ref_t(2, 0.9) == pytest.approx(0.9 * math.sqrt(2 / (1 - 0.81)), rel=1e-10)  # ν = 2 in closed form
    assert ref_t(1000) == pytest.approx(1.9623, abs=1e-4)


def test_reference_crossed_mean_squares_on_a_hand_grid():
    # seeds × prompts = 2 × 3; mean 3.5; seed means 2, 5; prompt means 2, 5, 3.5
    r = ref_crossed([[1, 3, 2], [3, 7, 5]])
    # MS_seed = 3·(1.5² + 1.5²)/1; MS_prompt = 2·(1.5² + 1.5² + 0)/2; residuals ±0.5 (four), 0 (two): 1/2
    assert r["ms"] == pytest.approx((13.5, 4.5, 0.5))
    assert r["df"] == pytest.approx(17.5**2 / (13.5**2 + 4.5**2 / 2 + 0.5**2 / 2))


# ---------------------------------------------------------------------------------------------------
# crossed_interval
# ---------------------------------------------------------------------------------------------------


def test_crossed_interval_hand_grid_2x3():
    grid = [[1.0, 3.0, 2.0], [3.0, 7.0, 5.0]]
    # Var(mean) = (13.5 + 4.5 − 0.5)/6; Satterthwaite df = 17.5²/(13.5²/1 + 4.5²/2 + 0.5²/2) = 35/22
    e = crossed_interval(grid)
    half = ref_t(35 / 22) * math.sqrt(17.5 / 6)
    assert 5.55 < ref_t(35 / 22) < 5.57  # between t(1) = 12.7 and t(2) = 4.30
    assert_estimate(e, 3.5, 3.5 - half, 3.5 + half, 2, abs_tol=1e-7)


def test_crossed_interval_additive_grid_with_no_prompt_effect_is_the_t_interval_over_seeds():
    # every prompt alike, no interaction: the seed means are all there is (t with S − 1 df)
    grid = [[1.0] * 4, [3.0] * 4, [2.5] * 4]
    e = crossed_interval(grid)
    assert_estimate(e, *t_interval([1.0, 3.0, 2.5], ref_t(2)), 3, abs_tol=1e-7)
    # and every seed alike: the t interval over the prompt means (P − 1 df)
    e = crossed_interval([[0.0, 1.0, 0.5, 0.25]] * 3)
    assert_estimate(e, *t_interval([0.0, 1.0, 0.5, 0.25], ref_t(3)), 3, abs_tol=1e-7)


def test_crossed_interval_fallback_when_the_seed_component_is_negative():
    # seed means equal (MS_seed = 0 < MS_cell): the seed component is estimated below zero
    grid = [[1.0, 5.0, 9.0], [2.0, 4.0, 9.0]]
    # prompt means 1.5, 4.5, 9: MS_prompt = 2·(3.5² + 0.5² + 4²)/2 = 28.5; residuals ±0.5 (four): MS_cell = 0.5
    # unfallen: Var·6 = 0 + 28.5 − 0.5 = 28 < 28.5 → MS_prompt; the truncated seed term keeps its 1 df in
    # Satterthwaite's sum: df = 28.5² / (0.5²/1 + 28.5²/2 + 0.5²/2) = 812.25 / 406.5 (issue 30: 3 seeds must
    # not rest on the prompts' df alone)
    e = crossed_interval(grid)
    half = ref_t(812.25 / 406.5) * math.sqrt(28.5 / 6)
    assert_estimate(e, 5.0, 5.0 - half, 5.0 + half, 2, abs_tol=1e-7)
    assert ref_crossed(grid)["fallback"]
    # (without the fallback: 28/6 with Satterthwaite's 1.93 df — a different interval)
    unfallen = ref_t(28**2 / (28.5**2 / 2 + 0.5**2 / 2)) * math.sqrt(28 / 6)
    assert abs(unfallen - half) > 0.1


def test_crossed_interval_fallback_when_the_prompt_component_is_negative():
    # prompt means equal (MS_prompt = 0); seed means 1 and 5: MS_seed = 3·(2² + 2²) = 24 over 1 df,
    # residuals −1, 0, 1, 1, 0, −1: MS_cell = 4/2 = 2 → MS_seed alone: the t interval over the seed means
    grid = [[0.0, 1.0, 2.0], [6.0, 5.0, 4.0]]
    e = crossed_interval(grid)
    half = T1 * math.sqrt(24 / 6)
    assert_estimate(e, 3.0, 3.0 - half, 3.0 + half, 2, abs_tol=1e-6)
    assert_estimate(e, *t_interval([1.0, 5.0], T1), 2, abs_tol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("level", [0.9, 0.95, 0.99, 0.9875])
def test_crossed_interval_matches_the_independent_implementation(level):
    rng = np.random.default_rng(int(level * 1e4))
    fallbacks = 0
    cases = [
        rng.normal(size=(2, 2)),
        rng.normal(size=(3, 5)) + rng.normal(0, 2, size=(3, 1)),  # a seed effect
        rng.normal(size=(3, 40)) + rng.normal(0, 1, size=(1, 40)),  # a prompt effect
        rng.normal(size=(4, 7)),  # noise only: components often estimated below zero
        rng.binomial(1, 0.6, size=(3, 60)).astype(float),  # wins and losses
        rng.choice([0.0, 0.5, 1.0], size=(5, 9)),
        rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0], size=(3, 30)),  # paired differences of outcomes
        rng.normal(size=(6, 3)).T,  # more seeds than prompts, transposed
    ]
    for grid in cases:
        e = crossed_interval(grid.tolist(), level=level)
        r = assert_matches_ref(e, grid.tolist(), level)
        fallbacks += r["fallback"]
        assert e.low < e.mean < e.high
    assert 0 < fallbacks < len(cases)  # both branches were compared


def test_crossed_interval_symmetry_and_equivariance():
    rng = np.random.default_rng(7)
    grid = rng.normal(size=(3, 8)) + rng.normal(size=(3, 1))
    e = crossed_interval(grid)
    # seeds and prompts enter symmetrically (only n names the seeds)
    t = crossed_interval(grid.T)
    assert (t.mean, t.low, t.high, t.n) == pytest.approx((e.mean, e.low, e.high, 8))
    # an affine change of the outcome moves the interval with it
    a = crossed_interval(2.5 * grid - 1.0)
    assert (a.mean, a.low, a.high) == pytest.approx((2.5 * e.mean - 1, 2.5 * e.low - 1, 2.5 * e.high - 1))
    # a higher level gives a wider interval around the same mean
    w = crossed_interval(grid, level=0.99)
    assert w.mean == e.mean and w.low < e.low and w.high > e.high


def test_crossed_interval_missing_cells():
    rng = np.random.default_rng(8)
    grid = rng.normal(0.5, 0.3, size=(3, 12))
    holes = grid.copy()
    holes[0, 4] = holes[2, 9] = np.nan
    e = crossed_interval(holes.tolist())
    # a prompt with any missing cell is left out for every seed (the ANOVA needs a complete grid) ...
    complete = np.delete(grid, [4, 9], axis=1)
    assert e == crossed_interval(complete.tolist())
    assert_matches_ref(e, holes.tolist())
    assert e.mean == pytest.approx(float(complete.mean()))
    assert e.mean != pytest.approx(float(np.nanmean(holes)))  # ... so the mean is not the mean of every cell
    # a seed with no outcome at all is dropped (and not counted)
    dead = np.vstack([holes, np.full((1, 12), np.nan)])
    assert crossed_interval(dead.tolist()) == e and e.n == 3
    # a prompt missing for every seed is the same as a grid without it
    assert crossed_interval(np.hstack([grid, np.full((3, 1), np.nan)]).tolist()) == crossed_interval(grid.tolist())
    # nothing complete is left: no estimate
    for g in ([[1.0, NAN], [NAN, 1.0]], [[NAN, NAN]], [[NAN], [NAN]]):
        e = crossed_interval(g)
        assert e.n == 0 and math.isnan(e.mean) and math.isnan(e.low) and math.isnan(e.high)


def test_crossed_interval_one_seed_one_prompt_and_degenerate_grids():
    # one seed: the t interval over prompts
    row = [1.0, 0.0, 1.0, 1.0, 0.5, 0.0, 1.0]
    assert_estimate(crossed_interval([row]), *t_interval(row, ref_t(6)), 1, abs_tol=1e-7)
    # one seed with missing cells: over the prompts it has
    assert_estimate(crossed_interval([[1.0, NAN, 0.5, 0.0]]), *t_interval([1.0, 0.5, 0.0], T2), 1, abs_tol=1e-7)
    # one prompt: the t interval over seeds
    assert_estimate(crossed_interval([[0.2], [0.5], [0.4], [0.9]]), *t_interval([0.2, 0.5, 0.4, 0.9], ref_t(3)), 4)
    # one cell: a mean without an interval
    e = crossed_interval([[0.75]])
    assert e.mean == 0.75 and e.n == 1 and math.isnan(e.low) and math.isnan(e.high)
    e = crossed_interval([[NAN, 0.25], [NAN, NAN]])
    assert e.mean == 0.25 and e.n == 1 and math.isnan(e.low)
    # a constant grid: zero width at the constant
    assert crossed_interval([[0.5] * 4] * 3) == Estimate(0.5, 0.5, 0.5, 3)
    assert crossed_interval([[1.0] * 5]) == Estimate(1.0, 1.0, 1.0, 1)
    # nothing at all
    for g in ([], [[]], [1.0, 2.0]):
        e = crossed_interval(g)
        assert e.n == 0 and math.isnan(e.mean)


def test_crossed_interval_is_not_certain_when_only_cells_vary():
    # a Latin square of wins: every seed wins one prompt of three, every prompt is won by one seed
    for grid in ([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]):
        e = crossed_interval(grid)
        assert e.high - e.low > 0.1, grid


@pytest.mark.slow
def test_crossed_interval_coverage_under_two_way_random_effects():
    """y[s,p] = μ + a_s + b_p + ε at the study's shape (3 seeds × 200 prompts): the crossed interval
    covers μ about as often as promised; the pooled iid interval (what the demo did) does not."""
    rng = np.random.default_rng(2025)
    mu, seeds, prompts, reps = 0.5, 3, 200, 150

    def draw(seed_sd):
        return (
            mu
            + rng.normal(0, seed_sd, size=(seeds, 1))
            + rng.normal(0, 0.3, size=(1, prompts))
            + rng.normal(0, 0.4, size=(seeds, prompts))
        )

    def pooled_covers(grid):
        return abs(grid.mean() - mu) <= 1.96 * grid.std(ddof=1) / math.sqrt(grid.size)

    covered = 0
    for _ in range(reps):
        e = crossed_interval(draw(0.1).tolist())
        covered += e.low <= mu <= e.high
    assert 0.85 <= covered / reps <= 1.0
    # a large seed effect: the crossed interval still covers, the pooled one rarely does
    covered = naive = 0
    for _ in range(reps):
        grid = draw(0.3)
        e = crossed_interval(grid.tolist())
        covered += e.low <= mu <= e.high
        naive += pooled_covers(grid)
    assert 0.85 <= covered / reps <= 1.0
    assert naive / reps < 0.5


# ---------------------------------------------------------------------------------------------------
# t_quantile_at, _betainc
# ---------------------------------------------------------------------------------------------------


def test_t_quantile_at_table_and_known_values():
    for df, t in T_TABLE.items():
        assert t_quantile_at(df, 0.95) == pytest.approx(t, abs=5e-4), df
    for df, level, t in ((2, 0.99, 9.925), (5, 0.90, 2.015), (7.5, 0.95, 2.333), (1, 0.99, 63.657), (30, 0.99, 2.750)):
        assert t_quantile_at(df, level) == pytest.approx(t, abs=1e-3), (df, level)
    # large df: the normal quantiles
    assert t_quantile_at(1e6, 0.95) == pytest.approx(1.95996, abs=1e-4)
    assert t_quantile_at(1e6, 0.99) == pytest.approx(2.57583, abs=1e-4)
    assert t_quantile_at(1e6, 0.90) == pytest.approx(1.64485, abs=1e-4)


@pytest.mark.parametrize("level", [0.5, 0.8, 0.9, 0.95, 0.9875, 0.99, 0.999])
def test_t_quantile_at_closed_forms(level):
    # ν = 1 (Cauchy): t = tan(π·level/2); ν = 2: t = level·√(2/(1 − level²))
    assert t_quantile_at(1, level) == pytest.approx(math.tan(math.pi * level / 2), rel=1e-9)
    assert t_quantile_at(2, level) == pytest.approx(level * math.sqrt(2 / (1 - level**2)), rel=1e-9)


@pytest.mark.slow
def test_t_quantile_at_fractional_df_against_the_reference():
    for df in (0.7, 35 / 22, 2.5, 3.3, 6.7978, 12.25, 47.2, 300.0):
        for level in (0.9, 0.95, 0.9875, 0.99):
            assert t_quantile_at(df, level) == pytest.approx(ref_t(df, level), rel=1e-8), (df, level)


@pytest.mark.slow
def test_t_quantile_at_shape_and_invalid_df():
    qs = [t_quantile_at(d, 0.95) for d in (0.5, 0.9, 1, 1.5, 2, 3, 5, 10, 30, 100, 1000)]
    assert all(a > b for a, b in itertools.pairwise(qs))  # decreasing in df
    ls = [t_quantile_at(4.5, lv) for lv in (0.5, 0.8, 0.9, 0.95, 0.99, 0.999)]
    assert all(a < b for a, b in itertools.pairwise(ls))  # increasing in the level
    for df in range(11, 200, 7):  # the older table + expansion agrees
        assert abs(t_quantile_at(df, 0.95) - t_quantile(df)) < 0.003, df
    for df in (0, -1.0, NAN):
        assert math.isnan(t_quantile_at(df, 0.95))


def test_t_quantile_at_extreme_levels():
    assert t_quantile_at(1, 0.99999) == pytest.approx(math.tan(math.pi * 0.99999 / 2), rel=1e-6)


def test_betainc_closed_forms_and_reference():
    for x in (0.01, 0.2, 0.5, 0.77, 0.99):
        assert _betainc(3.5, 1.0, x) == pytest.approx(x**3.5, rel=1e-12)  # I_x(a, 1) = x^a
        assert _betainc(1.0, 2.5, x) == pytest.approx(1 - (1 - x) ** 2.5, rel=1e-12)  # I_x(1, b) = 1 − (1−x)^b
        assert _betainc(0.5, 0.5, x) == pytest.approx(2 / math.pi * math.asin(math.sqrt(x)), rel=1e-12)
        for a, b in ((0.35, 0.5), (2.0, 0.5), (7.3, 0.5), (150.0, 0.5), (4.0, 9.0)):
            want = float(mpmath.betainc(a, b, 0, x, regularized=True))
            assert _betainc(a, b, x) == pytest.approx(want, rel=1e-10, abs=1e-300), (a, b, x)
            assert _betainc(a, b, x) + _betainc(b, a, 1 - x) == pytest.approx(1.0, abs=1e-12)
    assert _betainc(2.0, 0.5, 0.0) == 0.0 and _betainc(2.0, 0.5, 1.0) == 1.0
    assert _betainc(2.0, 0.5, -0.1) == 0.0 and _betainc(2.0, 0.5, 1.5) == 1.0
