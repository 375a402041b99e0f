"""Statistics for the study: intervals that respect how outcomes were drawn.

Outcomes form a seeds × prompts grid: every run of a configuration answers the same prompts, and a
run's answers share its training seed. Pooling the grid as S·P independent outcomes (what the demo
did) ignores both correlations, so intervals come out too narrow. ``crossed_interval`` (the one
the study reports) estimates the variance of the grid mean from the two-way random-effects ANOVA,
Var = (MS_seed + MS_prompt − MS_cell)/(S·P), with a Satterthwaite t quantile: with 3 seeds the seed
term has 2 degrees of freedom and the interval widens accordingly. ``cluster_bootstrap`` resamples
seeds and prompts independently (Owen 2007's pigeonhole bootstrap); with few seeds it undercovers
(the seed term is underestimated by (S−1)/S and the quantiles come from resamples repeating one
seed), so it is kept as a cross-check. See docs/design.md §8. Paired comparisons (same prompt, same
seed) are grids of per-cell differences or head-to-head outcomes and get the same interval.
Quantities measured once per run (held-out drift, top-token mass, Hessian traces) get a
Student-t interval over seeds; with 3 seeds t₀.₉₇₅ = 4.30, so those intervals are wide by design.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from logitsam.evaluation.winrate import Interval, t_quantile


@dataclass(frozen=True)
class Estimate(Interval):
    """A mean with a 95% interval (any construction); ``n`` = the seeds or clusters it rests on."""

    def excludes(self, value: float) -> int:
        """+1 if the whole interval is above ``value``, −1 if below, 0 if it contains it (or is undefined)."""
        if not (self.low == self.low and self.high == self.high):
            return 0
        return 1 if self.low > value else -1 if self.high < value else 0


NAN = Estimate(float("nan"), float("nan"), float("nan"), 0)


def seed_interval(values: Sequence[float]) -> Estimate:
    """Mean ± t·s/√n over seeds (NaNs dropped); a single value has no interval."""
    v = [float(x) for x in values if x == x]
    if not v:
        return NAN
    m = sum(v) / len(v)
    if len(v) == 1:
        return Estimate(m, float("nan"), float("nan"), 1)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))
    half = t_quantile(len(v) - 1) * sd / math.sqrt(len(v))
    return Estimate(m, m - half, m + half, len(v))


def cluster_bootstrap(
    grid: Sequence[Sequence[float]], *, resamples: int = 4000, seed: int = 0, level: float = 0.95
) -> Estimate:
    """Mean of a seeds × prompts grid with a percentile interval resampling seeds *and* prompts.

    grid[s][p]: the outcome of seed s on prompt p (NaN: missing, e.g. a failed judgement; left out of
    every mean). With one seed this is the ordinary bootstrap over prompts. ``n`` = seeds with any outcome.
    """
    x = np.asarray(grid, dtype=np.float64)
    if x.ndim != 2 or x.size == 0 or np.isnan(x).all():
        return NAN
    x = x[~np.isnan(x).all(axis=1)]  # a seed with no outcome at all is not a cluster
    s_n, p_n = x.shape
    ok = ~np.isnan(x)
    vals = np.where(ok, x, 0.0)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for i in range(resamples):
        si = rng.integers(0, s_n, s_n)
        # counts per prompt: the mean over the resampled grid weights each prompt by its multiplicity
        w = np.bincount(rng.integers(0, p_n, p_n), minlength=p_n).astype(np.float64)
        num = (vals[si] * w).sum()
        den = (ok[si] * w).sum()
        means[i] = num / den if den else np.nan
    means = means[~np.isnan(means)]
    mean = float(vals.sum() / ok.sum())
    if means.size == 0:
        return Estimate(mean, float("nan"), float("nan"), s_n)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(mean, float(lo), float(hi), s_n)


def t_quantile_at(df: float, level: float) -> float:
    """Two-sided Student-t quantile at ``level`` (any df > 0), by inverting the regularised incomplete
    beta function with bisection (torch.special has no t quantile; scipy is not a dependency)."""
    if not df > 0:
        return float("nan")

    def tail(t: float) -> float:  # P(|T| > t) = I_{df/(df+t²)}(df/2, 1/2)
        x = torch.tensor(df / (df + t * t), dtype=torch.float64)
        return float(_betainc(df / 2, 0.5, x))

    lo, hi = 0.0, 1e4
    while tail(hi) > 1 - level and hi < 1e300:  # 1 df at extreme levels: the quantile is far out
        lo, hi = hi, hi * 100
    for _ in range(400):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if tail(mid) > 1 - level else (lo, mid)
    return (lo + hi) / 2


def _betainc(a: float, b: float, x: Any) -> float:
    """Regularised incomplete beta I_x(a, b) by its continued fraction (Numerical Recipes §6.4)."""
    x = float(x)
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(lbeta + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1 - x)
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
    f = d
    for m in range(1, 500):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
            c = 1.0 + num / c
            c = c if abs(c) > 1e-300 else 1e-300
            f *= c * d
        if abs(c * d - 1) < 1e-15:
            break
    return front * f / a


def crossed_interval(grid: Sequence[Sequence[float]], *, level: float = 0.95) -> Estimate:
    """Mean of a seeds × prompts grid with a t interval from the crossed random-effects ANOVA.

    Var(mean) = (MS_seed + MS_prompt − MS_cell)/(S·P) — unbiased for σ²_seed/S + σ²_prompt/P + σ²_cell/(SP)
    — with a variance component estimated below 0 set to 0 (MS_prompt/(S·P), MS_seed/(S·P) or
    MS_cell/(S·P) then), and Satterthwaite degrees of freedom (floored at the smallest df of its terms). A
    seed component truncated to 0 keeps its S − 1 degrees of freedom in that sum: with 3 seeds it is
    known only to 2 df, and dropping it would rest the interval on the prompts' P − 1.
    Prompts with a missing (NaN) cell are left out (the ANOVA needs a complete grid); seeds with no
    outcome too. One seed: the t interval over prompts.
    ``n`` = seeds used.
    """
    x = np.asarray(grid, dtype=np.float64)
    if x.ndim != 2 or x.size == 0:
        return NAN
    x = x[~np.isnan(x).all(axis=1)]
    x = x[:, ~np.isnan(x).any(axis=0)] if x.size else x
    if x.size == 0:
        return NAN
    s_n, p_n = x.shape
    mean = float(x.mean())
    if s_n == 1 or p_n == 1:
        v = x.ravel()
        if v.size < 2:
            return Estimate(mean, float("nan"), float("nan"), s_n)
        half = t_quantile_at(v.size - 1, level) * float(v.std(ddof=1)) / math.sqrt(v.size)
        return Estimate(mean, mean - half, mean + half, s_n)
    rs, cs = x.mean(axis=1), x.mean(axis=0)
    ms_s = p_n * float(((rs - mean) ** 2).sum()) / (s_n - 1)
    ms_p = s_n * float(((cs - mean) ** 2).sum()) / (p_n - 1)
    resid = x - rs[:, None] - cs[None, :] + mean
    ms_e = float((resid**2).sum()) / ((s_n - 1) * (p_n - 1))
    # each variance component truncated at 0: S·P·Var = max(MS_s − MS_e, 0) + max(MS_p − MS_e, 0) + MS_e
    df_s, df_p, df_e = s_n - 1, p_n - 1, (s_n - 1) * (p_n - 1)
    tie = 1e-9 * max(ms_s, ms_p, ms_e)  # a component within rounding of 0 is 0 (else df jumps on noise)
    seed_on, prompt_on = ms_s - ms_e > tie, ms_p - ms_e > tie
    if seed_on and prompt_on:
        terms = [(ms_s, df_s), (ms_p, df_p), (-ms_e, df_e)]
    elif seed_on:
        terms = [(ms_s, df_s)]
    elif prompt_on:
        # the seed component estimated ≤ 0 is set to 0, but that estimate rests on S − 1 degrees of freedom:
        # keep its MS_e-sized term and df in the Satterthwaite sum (it cancels in the variance), so 3 seeds
        # widen the interval when the cell noise is comparable to the prompt term (issue 30)
        terms = [(ms_e, df_s), (ms_p, df_p), (-ms_e, df_e)]
    else:
        terms = [(ms_e, df_e)]
    total = sum(t for t, _ in terms)
    if total <= 0:
        return Estimate(mean, mean, mean, s_n)
    # Satterthwaite; with the negative term it can fall below every component's own df, where it is no
    # longer a useful approximation: floor it at the smallest df of the positive terms
    df = max(total**2 / sum(t * t / d for t, d in terms), min(d for t, d in terms if t > 0))
    half = t_quantile_at(df, level) * math.sqrt(total / (s_n * p_n))
    return Estimate(mean, mean - half, mean + half, s_n)


def head_to_head(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> list[list[float]]:
    """Per (seed, prompt): 1 if a's reward beats b's, ½ on a tie, 0 otherwise, NaN if either is missing
    (rewards of a gold-reward judge; a pairwise judge's outcomes are already this grid)."""
    out = []
    for ra, rb in zip(a, b, strict=True):
        row = []
        for x, y in zip(ra, rb, strict=True):
            row.append(float("nan") if x != x or y != y else 1.0 if x > y else 0.0 if x < y else 0.5)
        out.append(row)
    return out


def at_level(xs: Sequence[float], ys: Sequence[float], x0: float) -> float:
    """y where the trajectory (xs, ys) first reaches x0, linearly interpolated between logged points.

    The trajectory is walked in order (training time); NaN if it never reaches x0. Used to read one
    run's chosen drift at the rejected drift / margin another run ended at.
    """
    pts = [(float(x), float(y)) for x, y in zip(xs, ys, strict=True) if x == x and y == y]
    for (x1, y1), (x2, y2) in itertools.pairwise(pts):
        if x1 == x0:
            return y1
        if (x1 - x0) * (x2 - x0) < 0 or x2 == x0:
            return y1 + (y2 - y1) * (x0 - x1) / (x2 - x1)
    if len(pts) == 1 and pts[0][0] == x0:
        return pts[0][1]
    return float("nan")


def paired_gap(trajectories: Sequence[tuple[dict[int, float], dict[int, float]]]) -> tuple[float, float]:
    """(gap, paired SD) of an arm against its plain run over seeds, from per-seed trajectories {step: value}.

    d_s(t) = arm_s(t) − plain_s(t) at the steps both runs of seed s logged; gap = max over seeds and steps of
    |d_s(t)| (how far the arm ever leaves its own seed's plain run); paired SD = the seed-to-seed SD of d_s at
    the last step they share (NaN with fewer than 2 seeds). The paired SD is the noise of a *paired*
    comparison: a shift common to every seed does not enter it, however much the plain runs themselves vary
    between seeds (their unpaired SD, the old yardstick, would call a consistent 2-nat shift with seed SD 2
    a no-op).
    """
    diffs = [{k: a[k] - b[k] for k in set(a) & set(b)} for a, b in trajectories]
    diffs = [d for d in diffs if d]
    if not diffs:
        return float("nan"), float("nan")
    gap = max(abs(v) for d in diffs for v in d.values())
    common = set.intersection(*(set(d) for d in diffs))
    if len(diffs) < 2 or not common:
        return gap, float("nan")
    last = [d[max(common)] for d in diffs]
    m = sum(last) / len(last)
    return gap, math.sqrt(sum((x - m) ** 2 for x in last) / (len(last) - 1))


def on_line(x1: float, y1: float, x2: float, y2: float, x0: float) -> tuple[float, bool]:
    """(y at x0 on the line through two points, whether x0 lies between them): a two-point frontier."""
    if x1 == x2:
        return (y1 + y2) / 2 if x0 == x1 else float("nan"), x0 == x1
    y = y1 + (y2 - y1) * (x0 - x1) / (x2 - x1)
    return y, min(x1, x2) <= x0 <= max(x1, x2)


def clip(e: Estimate, low: float, high: float) -> Estimate:
    """An interval cut to the values the quantity can take (a t interval for a rate can leave [0, 1])."""
    if not (e.low == e.low and e.high == e.high):  # no interval: nothing to clip (NaN stays NaN)
        return e
    return Estimate(e.mean, max(low, e.low), min(high, e.high), e.n)
