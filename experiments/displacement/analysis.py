"""The displacement main comparison's estimates and claims, from the finished records alone.

Per run, the means over the probed pairs of :func:`gate.measures`; per arm, t intervals over seeds (win
rate and KL: crossed seeds × prompts intervals). Each arm is paired with plain DPO twice: at matched steps
(same seed) and at matched KL (its training Δ+ minus DPO's frontier at the arm's KL — lr × 0.25, 0.5, 1 of
the same seed, piecewise linear in KL; an arm outside the frontier's KL range is not compared on that
seed). Effects of interest, power and the no-op rule: docs/design.md §10.
"""

from __future__ import annotations

import itertools
from typing import Any

from experiments.displacement.gate import measures
from experiments.displacement.plan import DPO, FRONTIER, ORDER
from experiments.squeeze.analysis import load as squeeze_load
from experiments.squeeze.gate import trajectory
from experiments.squeeze.plan import sam_scale
from experiments.stats import clip, crossed_interval, on_line, paired_gap, seed_interval
from experiments.verdicts import NOT_TESTABLE, _fmt, effect_for, mde, noop, verdict, win_verdict

Runs = dict[str, dict[int, dict[str, Any]]]
KEYS = ("train_dplus", "train_dminus", "train_margin", "control_drift", "dplus_minus_control", "heldout_dplus")
REGION_KEYS = ("train_dplus_prefix", "train_dplus_differ", "train_dplus_suffix")
ABSOLUTE_EFFECT = 2.0  # nats: the smallest rise of the trained chosen's Δ+ that counts (design.md §10)
RELATIVE_EFFECT = 0.5  # … or this share of DPO's own fall, whichever is larger


def load(out: str, setting: str) -> tuple[dict[str, Any], Runs]:
    """(the setting's start file, {arm label: {seed: record}}) in the plan's arm order (squeeze's reader)."""
    start, runs = squeeze_load(out, setting)
    order = {a.label: i for i, a in enumerate(ORDER)}
    return start, dict(sorted(runs.items(), key=lambda kv: order.get(kv[0], len(order))))


def per_run(rec: dict[str, Any], start: dict[str, Any]) -> dict[str, float]:
    m = measures(rec, start)
    out = {k: m[k]["mean"] for k in (*KEYS, *REGION_KEYS) if k in m}
    out["kl"], out["win_vs_sft"] = m["kl"], m["win_vs_sft"]["mean"]
    return out


def arm_row(seeds: dict[int, dict[str, Any]], start: dict[str, Any]) -> dict[str, Any]:
    recs = [seeds[s] for s in sorted(seeds)]
    runs = [per_run(r, start) for r in recs]
    row: dict[str, Any] = {"seeds": sorted(seeds)}
    row["win_vs_sft"] = clip(crossed_interval([r["outcomes_vs_sft"] for r in recs]), 0.0, 1.0).to_dict()
    row["kl"] = crossed_interval([r["kl_values"] for r in recs]).to_dict()
    for k in runs[0]:
        if k not in ("kl", "win_vs_sft"):
            row[k] = seed_interval([x[k] for x in runs]).to_dict()
    scales = [s for s in (sam_scale(r) for r in recs) if s]
    if scales:
        row["sam_first_order"] = sum(s["first_order"] for s in scales) / len(scales)
        row["sam_measured"] = sum(s["measured"] for s in scales) / len(scales)
    return row


def frontier_at(points: list[tuple[float, float]], kl: float) -> float:
    """The frontier's training Δ+ at ``kl``: piecewise linear between the (KL, Δ+) points sorted by KL; NaN
    outside their range."""
    pts = sorted(points)
    for (x1, y1), (x2, y2) in itertools.pairwise(pts):
        y, inside = on_line(x1, y1, x2, y2, kl)
        if inside:
            return y
    return pts[0][1] if len(pts) == 1 and pts[0][0] == kl else float("nan")


def matched_kl(arm: dict[int, dict], runs: Runs, start: dict[str, Any]) -> dict[str, Any]:
    """Per seed, the arm's training Δ+ minus the DPO frontier's at the arm's KL; t over the seeds compared."""
    diffs, skipped = [], []
    for s, rec in sorted(arm.items()):
        pts = [
            (per_run(runs[a.label][s], start)["kl"], per_run(runs[a.label][s], start)["train_dplus"])
            for a in FRONTIER
            if s in runs.get(a.label, {})
        ]
        r = per_run(rec, start)
        y = frontier_at(pts, r["kl"]) if len(pts) >= 2 else float("nan")
        (diffs if y == y else skipped).append(r["train_dplus"] - y if y == y else s)
    return {"diff": seed_interval(diffs).to_dict(), "seeds_outside": skipped}


def paired(a: dict[int, dict], b: dict[int, dict], start: dict[str, Any]) -> dict[str, Any]:
    """``a`` against plain DPO ``b`` on their common seeds, in the shape verdicts.py reads."""
    common = sorted(set(a) & set(b))

    def grid(runs: dict[int, dict], key: str) -> list[list[float]]:
        return [runs[s][key] for s in common]

    def diff(x: list[list[float]], y: list[list[float]]) -> list[list[float]]:
        return [[u - v for u, v in zip(rx, ry, strict=True)] for rx, ry in zip(x, y, strict=True)]

    ra, rb = [per_run(a[s], start) for s in common], [per_run(b[s], start) for s in common]
    gap, sd = paired_gap([(trajectory(a[s], start, "train", 0), trajectory(b[s], start, "train", 0)) for s in common])
    n = sum(len(a[s]["samples"]) for s in common)
    same = sum(x == y for s in common for x, y in zip(a[s]["samples"], b[s]["samples"], strict=True))
    out: dict[str, Any] = {
        "against": "dpo",
        "seeds": common,
        "identical_samples": same / max(1, n),
        "win_vs_sft_diff": clip(
            crossed_interval(diff(grid(a, "outcomes_vs_sft"), grid(b, "outcomes_vs_sft"))), -1, 1
        ).to_dict(),
        "kl_diff": crossed_interval(diff(grid(a, "kl_values"), grid(b, "kl_values"))).to_dict(),
        "chosen_drift_gap": gap,
        "paired_drift_sd": sd,
        "win": {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0},
        "ties": float("nan"),
    }
    for k in ra[0]:
        if k not in ("win_vs_sft", "kl"):  # those two: crossed intervals above
            out[k + "_diff"] = seed_interval([x[k] - y[k] for x, y in zip(ra, rb, strict=True)]).to_dict()
    return out


def analyse(out: str, setting: str) -> dict[str, Any]:
    """Rows, paired and matched-KL comparisons against DPO, and one line per claim."""
    start, runs = load(out, setting)
    rows = {lb: arm_row(seeds, start) for lb, seeds in runs.items()}
    dpo = runs.get(DPO.label, {})
    pairs = {lb: paired(s, dpo, start) for lb, s in runs.items() if lb != DPO.label and set(s) & set(dpo)}
    for lb in pairs:
        pairs[lb]["matched_kl"] = matched_kl(runs[lb], runs, start)
    res: dict[str, Any] = {"setting": setting, "configs": rows, "paired": pairs}
    fall = -rows[DPO.label]["train_dplus"]["mean"] if DPO.label in rows else float("nan")
    effect = max(ABSOLUTE_EFFECT, RELATIVE_EFFECT * fall) if fall == fall else ABSOLUTE_EFFECT
    res["displacement_effect"] = effect
    claims = []
    for lb, p in pairs.items():
        arm = runs[lb][p["seeds"][0]]["arm"]
        if not (arm["rho"] and arm["mode"] == "logits"):
            continue
        mk = p["matched_kl"]["diff"]
        v = verdict(mk, 0.0, +1, effect)
        idle = noop(p) if v != "not measured" else None
        claims.append({
            "claim": f"{lb} counters displacement: the trained chosen's Δ+ above DPO's at matched KL",
            "verdict": NOT_TESTABLE if idle else v,
            "evidence": f"matched-KL difference {_fmt(mk)} nats over {mk['n']} seed(s) (effect of interest "
            f"{effect:.1f} nats, MDE {mde(mk):.2g}); at matched steps {_fmt(p['train_dplus_diff'])}; "
            f"KL difference {_fmt(p['kl_diff'])}"
            + (f"; {idle}" if idle else "")
            + ("; a real gain (its interval is above 0) but short of the effect of interest"
               if v == "not reproduced" and mk.get("low", 0) > 0 else ""),
        })  # fmt: skip
        claims.append(
            {
                "claim": f"{lb} raises DPO's win rate against SFT",
                **dict(zip(("verdict", "evidence"), win_verdict(p, f"{lb} − dpo", res, "dpo"), strict=True)),
            }
        )
    res["effect"], res["effect_text"] = effect_for(res, "dpo")
    res["claims"] = claims
    return res
