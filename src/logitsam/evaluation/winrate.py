"""Win rates with bootstrap confidence intervals, what they rest on (judge failures, ties, truncations), and the
sequence-level KL."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from logitsam.core.logprobs import IGNORE_INDEX
from logitsam.core.scoring import model_sequence_logps

# two-sided 95% Student-t quantiles by degrees of freedom (scipy is not a dependency)
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def t_quantile(df: int) -> float:
    """Two-sided 95% Student-t quantile: the table to 10 degrees of freedom, then the Cornish-Fisher
    expansion around z = 1.96 (error < 0.003 at df = 11, shrinking with df)."""
    if df < 1:
        return float("nan")
    if df in _T975:
        return _T975[df]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Interval:
    """Mean with a 95% percentile-bootstrap interval over prompts."""

    mean: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{100 * self.mean:.1f} [{100 * self.low:.1f}, {100 * self.high:.1f}]"


def bootstrap(values: Sequence[float], *, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> Interval:
    """Mean of ``values`` and its percentile-bootstrap interval (resampling prompts with replacement).

    NaN values (comparisons the judge failed on) are left out; ``n`` counts the rest.
    """
    vals = [v for v in values if v == v]
    if not vals:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    rng = random.Random(seed)
    n = len(vals)
    means = sorted(sum(vals[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    lo = means[int((1 - level) / 2 * resamples)]
    hi = means[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return Interval(sum(vals) / n, lo, hi, n)


def judge_counts(outcomes: Sequence[float], a: Sequence[str], b: Sequence[str], report: Any = None) -> dict[str, int]:
    """What a win rate rests on: judge failures (NaN outcomes), ties (½; ``identical``: the two texts were
    the same) and, when the judge's ``report`` (``judge.last``) counts them, truncated comparisons."""
    ties = [i for i, x in enumerate(outcomes) if x == 0.5]
    out = {
        "pairs": len(outcomes),
        "failures": sum(x != x for x in outcomes),
        "ties": len(ties),
        "identical": sum(a[i] == b[i] for i in ties),
    }
    for key in ("truncated", "responses_cut"):
        n = getattr(report, key, 0)
        if isinstance(n, int) and n:
            out[key] = n
    return out


def judge_warning(label: str, counts: dict[str, int]) -> str | None:
    """A warning when the judge failed or tied on most pairs: the win rate then says little (50% from ties
    alone, or an interval over the few decided pairs)."""
    n, bad = counts["pairs"], counts["failures"] + counts["ties"]
    if n == 0 or 2 * bad <= n:
        return None
    same = f" ({counts['identical']} of the ties: identical responses)" if counts["identical"] else ""
    return (
        f"{label}: the judge failed on {counts['failures']} and tied on {counts['ties']} of {n} pairs{same}; "
        f"its win rate rests on {n - bad} decided pairs"
    )


@torch.no_grad()
def sequence_kl_values(
    policy: Any, reference: Any, samples: Sequence[tuple[list[int], list[int]]], pad_token_id: int, batch_size: int = 16
) -> list[float]:
    """Per sample: log π(y|x) − log π_ref(y|x) (summed over the sampled tokens), in ``samples`` order.

    Their mean over policy samples is the Monte-Carlo estimate of KL(π‖π_ref).
    samples: (prompt ids, sampled ids) pairs as returned by ``generate(..., return_ids=True)``.
    The two models may live on different devices: each gets the batch on its own.
    """
    values: list[float] = []
    for s in range(0, len(samples), batch_size):
        chunk = samples[s : s + batch_size]
        width = max(len(p) + len(r) for p, r in chunk)
        input_ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (p, r) in enumerate(chunk):
            input_ids[i, : len(p) + len(r)] = torch.tensor(p + r)
            labels[i, len(p) : len(p) + len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(p) + len(r)] = 1
        lp = []
        for m in (policy, reference):
            dev = next(m.parameters()).device
            lp.append(model_sequence_logps(m, input_ids.to(dev), mask.to(dev), labels.to(dev)).double().cpu())
        values += (lp[0] - lp[1]).tolist()
    return values


def sequence_kl(
    policy: Any, reference: Any, samples: Sequence[tuple[list[int], list[int]]], pad_token_id: int, batch_size: int = 16
) -> float:
    """Monte-Carlo KL(π‖π_ref): the mean of ``sequence_kl_values`` over policy samples."""
    values = sequence_kl_values(policy, reference, samples, pad_token_id, batch_size)
    return sum(values) / max(len(values), 1)
