"""The study's analysis: per-configuration estimates, paired comparisons, the matched-movement
control and one line per claim (results.json + report.md + plots in the study directory).

Everything is computed from ``shared.json`` and the finished runs' ``record.json`` (runner.py), so
the report can be rewritten at any time (``python -m experiments.study.command --report-only``) and covers the runs
finished so far; configurations with fewer seeds than planned are marked.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import statistics
from collections import defaultdict
from typing import Any

from experiments.stats import (
    Estimate,
    at_level,
    clip,
    crossed_interval,
    head_to_head,
    on_line,
    paired_gap,
    seed_interval,
)
from experiments.study.plan import ARMS, GROUPS
from experiments.study.records import read_record, read_shared

log = logging.getLogger(__name__)
ORDER = [c.label for g in GROUPS.values() for c in g]
PLAIN = {c.label: c.plain for g in GROUPS.values() for c in g}
HELD = ("eval_logps/chosen_drift", "eval_logps/rejected_drift", "eval_probs/top_token")


Runs = dict[str, dict[int, dict[str, Any]]]  # {configuration label: {seed: record}}


def load_all(out: str) -> tuple[dict[str, Any], Runs, Runs]:
    """(shared.json, the plan's runs, the confirmation runs) of a study directory, each record read
    once; confirmation runs (fresh seeds) are kept apart: the plan's runs picked their ρ. Records made
    under other settings are left out with a warning naming them."""
    shared = read_shared(out)
    found: dict[bool, Runs] = {False: defaultdict(dict), True: defaultdict(dict)}
    for path in sorted(glob.glob(os.path.join(out, "runs", "*", "record.json"))):
        rec = read_record(path)
        if rec["key"] == shared["key"]:
            found[bool(rec.get("config", {}).get("confirm"))][rec["method"]][rec["spec"]["seed"]] = rec
        else:
            log.warning("%s: finished under other study settings; left out of the report", path)
    order = {label: i for i, label in enumerate(ORDER)}
    runs, fresh = (dict(sorted(found[c].items(), key=lambda kv: order.get(kv[0], len(order)))) for c in (False, True))
    return shared, runs, fresh


def load(out: str, confirm: bool = False) -> tuple[dict[str, Any], Runs]:
    """(shared.json, {configuration label: {seed: record}}): the plan's runs, or with ``confirm`` the
    confirmation runs (see ``load_all``)."""
    shared, runs, fresh = load_all(out)
    return shared, fresh if confirm else runs


def trajectory(rec: dict[str, Any], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of a held-out evaluation metric along a run (step 0 = the shared start).

    Reference-free losses (SLiC-HF, CPO) log no drift; every run starts from the reference, so their
    drift is the held-out log-prob minus its step-0 value (the same quantity)."""
    pts = sorted({r["step"]: r[key] for r in rec["log"] if key in r and "eval_loss" in r}.items())
    if not pts and key.endswith("_drift"):
        steps, vals = trajectory(rec, key[: -len("_drift")])
        if steps and steps[0] == 0:
            return steps, [v - vals[0] for v in vals]
    return [p[0] for p in pts], [p[1] for p in pts]


def final(rec: dict[str, Any], key: str) -> float:
    _, vals = trajectory(rec, key)
    return vals[-1] if vals else float("nan")


def _min(xs: list[float]) -> float:
    v = [x for x in xs if x == x]
    return min(v) if v else float("nan")


def _mean(xs: list[float]) -> float:
    v = [x for x in xs if x == x]
    return sum(v) / len(v) if v else float("nan")


def rho_of(label: str) -> float:
    """ρ of a planned configuration, looked up in the plan (labels are names, never parsed)."""
    if label not in ARMS:
        raise KeyError(f"{label!r} is not a configuration of the study's plan ({', '.join(ARMS)})")
    return ARMS[label].rho


def sweep_gains(runs: dict[str, dict[int, dict[str, Any]]], seeds: list[int] | None = None) -> dict[str, float]:
    """{DPO + logits-SAM label: mean paired gain in win rate against SFT over plain DPO} on the seeds both
    have among ``seeds`` (all if None); labels with no such seed are left out."""
    dpo = {s: r for s, r in runs.get("dpo", {}).items() if seeds is None or s in seeds}
    gains = {}
    for label in (lb for lb in runs if lb.startswith("dpo+lsam(")):
        sam = {s: r for s, r in runs[label].items() if s in dpo}
        if sam:
            gains[label] = paired(sam, dpo)["win_vs_sft_diff"]["mean"]
    return gains


def best_of_sweep(runs: dict[str, dict[int, dict[str, Any]]], seeds: list[int] | None = None) -> str | None:
    """The ρ sweep's pick, by a rule fixed before any confirmation run: the DPO + logits-SAM label whose
    paired gain in win rate against SFT over plain DPO (same seeds, same prompts) has the largest mean;
    a tie goes to the smaller ρ. Only ``seeds`` count (all common seeds if None); None without a sweep."""
    return pick(sweep_gains(runs, seeds))


def pick(gains: dict[str, float]) -> str | None:
    """The label with the largest gain (NaN left out), the smaller ρ on a tie: the sweep's one rule."""
    ok = [(g, -rho_of(lb), lb) for lb, g in gains.items() if g == g]
    return max(ok)[2] if ok else None


def config_row(label: str, seeds: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Estimates for one configuration over its seeds (grids are seeds × prompts)."""
    recs = [seeds[s] for s in sorted(seeds)]
    row: dict[str, Any] = {"method": label, "seeds": sorted(seeds), "plain": PLAIN.get(label)}
    for name, key in (
        ("win_vs_sft", "outcomes_vs_sft"),
        ("win_vs_chosen", "outcomes_vs_chosen"),
        ("reward", "rewards"),
        ("kl", "kl_values"),
    ):
        e = crossed_interval([r[key] for r in recs])
        row[name] = (clip(e, 0.0, 1.0) if name.startswith("win") else e).to_dict()
    for key in HELD:
        row[key.split("/")[1] + "_final"] = seed_interval([final(r, key) for r in recs]).to_dict()
    row["chosen_drift_min"] = seed_interval([_min(trajectory(r, HELD[0])[1]) for r in recs]).to_dict()
    finals = [x for x in (final(r, HELD[0]) for r in recs) if x == x]
    # seed noise of the final held-out Δ+ (the yardstick of a no-op: verdicts.noop)
    row["chosen_drift_sd"] = statistics.stdev(finals) if len(finals) >= 2 else float("nan")
    if all("hessian" in r for r in recs):
        for kind in ("parameter_hessian", "logit_hessian"):
            row[kind] = {
                "by_seed": {s: seeds[s]["hessian"][kind] for s in sorted(seeds)},
                "mean": seed_interval([r["hessian"][kind]["trace"] for r in recs]).to_dict(),
            }
    return row


def _grid(runs: dict[int, dict], seeds: list[int], key: str) -> list[list[float]]:
    return [runs[s][key] for s in seeds]


def _diff(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    return [[x - y for x, y in zip(ra, rb, strict=True)] for ra, rb in zip(a, b, strict=True)]


def paired(a: dict[int, dict], b: dict[int, dict], level: float = 0.95) -> dict[str, Any]:
    """``a`` against ``b`` on their common seeds, cell by cell (same prompt, same seed, the same
    generation seed): head-to-head win rate (and its share of ties), the difference of their win rates
    against SFT, of reward and of per-sample log π/π_ref (KL) — crossed random-effects intervals —
    and per-seed differences of the held-out measures and Hessian traces (t over seeds)."""
    common = sorted(set(a) & set(b))
    if not common:
        return {"seeds": []}
    out: dict[str, Any] = {"seeds": common}
    h2h = head_to_head(_grid(a, common, "rewards"), _grid(b, common, "rewards"))
    out["win"] = clip(crossed_interval(h2h, level=level), 0.0, 1.0)
    cells = [x for row in h2h for x in row if x == x]
    out["ties"] = sum(x == 0.5 for x in cells) / max(1, len(cells))
    out["identical_samples"] = sum(
        x == y for s in common for x, y in zip(a[s].get("samples", []), b[s].get("samples", []), strict=False)
    ) / max(1, len(cells))
    out["win_vs_sft_diff"] = clip(
        crossed_interval(_diff(_grid(a, common, "outcomes_vs_sft"), _grid(b, common, "outcomes_vs_sft")), level=level),
        -1.0,
        1.0,
    )
    out["reward_diff"] = crossed_interval(_diff(_grid(a, common, "rewards"), _grid(b, common, "rewards")), level=level)
    out["kl_diff"] = crossed_interval(_diff(_grid(a, common, "kl_values"), _grid(b, common, "kl_values")), level=level)
    for key in HELD:
        out[key.split("/")[1] + "_diff"] = seed_interval([final(a[s], key) - final(b[s], key) for s in common])
    out["chosen_drift_gap"], out["paired_drift_sd"] = paired_gap(
        [(_steps(a[s], HELD[0]), _steps(b[s], HELD[0])) for s in common]
    )
    if all("hessian" in a[s] and "hessian" in b[s] for s in common):
        for kind in ("parameter_hessian", "logit_hessian"):
            out[kind + "_diff"] = _trace_diff(
                [a[s]["hessian"][kind] for s in common], [b[s]["hessian"][kind] for s in common]
            )
    out["level"] = level
    return {k: v.to_dict() if isinstance(v, Estimate) else v for k, v in out.items()}


def _steps(rec: dict[str, Any], key: str) -> dict[int, float]:
    """{step: value} of a held-out metric along a run."""
    return dict(zip(*trajectory(rec, key), strict=True))


def _trace_diff(a: list[dict[str, float]], b: list[dict[str, float]]) -> Estimate:
    """Mean over seeds of trace(a) − trace(b), with an interval for both sources of error: the seeds
    (t over seeds) and the Hutchinson estimates themselves. Every model is probed with the same
    vectors, so probe noise is shared across seeds and a t over seeds does not see it; it is added
    as if independent between the two models (1.96·√(Σ se_a² + se_b²)/n, conservative when the
    shared probes make the two errors alike)."""
    e = seed_interval([x["trace"] - y["trace"] for x, y in zip(a, b, strict=True)])
    hutch = 1.959964 * math.sqrt(sum(x["stderr"] ** 2 + y["stderr"] ** 2 for x, y in zip(a, b, strict=True))) / len(a)
    if not (e.low == e.low and hutch == hutch):
        return e
    half = math.hypot(e.high - e.mean, hutch)
    return Estimate(e.mean, e.mean - half, e.mean + half, e.n)


def _at_equal(sam: dict, plain: dict, x_of: Any) -> float:
    """SAM's final held-out Δ+ minus plain's Δ+ at the same movement x (rejected drift or margin),
    read on plain's trajectory; if plain never moved that far, plain's final Δ+ minus SAM's Δ+ where
    SAM's trajectory reached plain's final x, negated (the match is made in whichever run got there)."""
    c_s, c_p = trajectory(sam, HELD[0])[1], trajectory(plain, HELD[0])[1]
    x_s, x_p = x_of(sam), x_of(plain)
    if not (c_s and c_p):
        return float("nan")
    y = at_level(x_p, c_p, x_s[-1])
    if y == y:
        return c_s[-1] - y
    y = at_level(x_s, c_s, x_p[-1])
    return y - c_p[-1] if y == y else float("nan")


def _rejected(rec: dict) -> list[float]:
    return trajectory(rec, HELD[1])[1]


def _margin(rec: dict) -> list[float]:
    return [c - r for c, r in zip(trajectory(rec, HELD[0])[1], _rejected(rec), strict=True)]


def matched(sam: dict[int, dict], plain: dict[int, dict], small: dict[int, dict]) -> dict[str, Any]:
    """The "it just moves less" control, per seed, then t over seeds (positive = logits-SAM's chosen
    drift is higher than plain DPO's at the same movement):

    - ``equal_rejected``: the plain run's held-out chosen drift where its trajectory reaches the
      rejected drift the SAM run ended at;
    - ``equal_margin``: the same at the SAM run's final held-out log-ratio margin (Δ+ − Δ−);
    - ``equal_kl``: on the line through plain DPO and DPO at half the learning rate (KL, Δ+) at the SAM
      run's KL (``equal_kl_bracketed``: seeds whose SAM KL lies between the two);
    - ``reward_at_equal_kl``: the same line for the mean reward (a frontier: higher = better trade).
    """
    out: dict[str, Any] = {}
    common = sorted(set(sam) & set(plain))
    rows = defaultdict(list)
    for s in common:
        cp = final(sam[s], HELD[0])
        rows["equal_rejected"].append(_at_equal(sam[s], plain[s], _rejected))
        rows["equal_margin"].append(_at_equal(sam[s], plain[s], _margin))
        if s in small:
            kl_s, kl_p, kl_h = (_mean(x[s]["kl_values"]) for x in (sam, plain, small))
            y, inside = on_line(kl_h, final(small[s], HELD[0]), kl_p, final(plain[s], HELD[0]), kl_s)
            rows["equal_kl"].append(cp - y)
            rows["equal_kl_bracketed"].append(float(inside))
            y, _ = on_line(kl_h, _mean(small[s]["rewards"]), kl_p, _mean(plain[s]["rewards"]), kl_s)
            rows["reward_at_equal_kl"].append(_mean(sam[s]["rewards"]) - y)
    for k, v in rows.items():
        if k == "equal_kl_bracketed":
            out[k] = {"seeds_bracketed": int(sum(v)), "of": len(v)}
            continue
        out[k + "_seeds"] = sum(x == x for x in v)  # seeds where the match exists
        out[k] = seed_interval(v).to_dict()
    out["seeds"] = common
    return out
