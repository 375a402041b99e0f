"""The main comparison's estimates and claims, from the finished records alone (main.py runs them).

Win rates, KL: seeds × prompts grids with crossed random-effects intervals, paired cell by cell
against the arm's plain run (plan.plain_of: DPO, or SLiC-HF / CPO in the second stage; same prompt,
same seed, same sampling seed). Held-out and training Δ±, top-token
and entropy changes: per run the mean over its probed pairs, then a t interval over seeds. Verdict
rules are the study's corrected ones (``experiments/verdicts.py``: effect of interest, no-op, MDE); when
the setting did not meet the gate, every verdict carries the gate's shortfall.
"""

from __future__ import annotations

import glob
import os
import statistics
from typing import Any

from experiments.records import verify_record
from experiments.squeeze.experiment import load_json
from experiments.squeeze.gate import change, shortfall, trajectory
from experiments.squeeze.plan import ALL_ARMS, CONTROL_ARMS, MAIN_ARMS, STAGE2_ARMS, plain_of, sam_scale
from experiments.stats import clip, crossed_interval, head_to_head, paired_gap, seed_interval
from experiments.verdicts import (
    NOT_TESTABLE,
    _fmt,
    effect_for,
    mde,
    noop,
    sweep_verdict,
    verdict,
    win_verdict,
)

Runs = dict[str, dict[int, dict[str, Any]]]
NAMES = {"dpo": "DPO", "slic": "SLiC-HF", "cpo": "CPO"}


def load(out: str, setting: str) -> tuple[dict[str, Any], Runs]:
    """(the setting's start file, {arm label: {seed: record}})."""
    start = load_json(os.path.join(out, "shared", f"{setting}.json"))
    runs: Runs = {}
    for path in sorted(glob.glob(os.path.join(out, "runs", setting, "*", "record.json"))):
        rec = verify_record(path, load_json(path))
        runs.setdefault(rec["arm"]["label"], {})[rec["seed"]] = rec
    order = {a.label: i for i, a in enumerate(ALL_ARMS)}
    return start, dict(sorted(runs.items(), key=lambda kv: order.get(kv[0], len(order))))


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def per_run(rec: dict[str, Any], start: dict[str, Any]) -> dict[str, float]:
    """One run's means over its probed pairs (final − start)."""
    return {
        "dplus": _mean(change(rec, start, "heldout", "logp", 0)),
        "dminus": _mean(change(rec, start, "heldout", "logp", 1)),
        "top": _mean(change(rec, start, "heldout", "top", None)),
        "entropy": _mean(change(rec, start, "heldout", "entropy", None)),
        "train_dplus": _mean(change(rec, start, "train", "logp", 0)),
        "train_dminus": _mean(change(rec, start, "train", "logp", 1)),
    }


def arm_row(seeds: dict[int, dict[str, Any]], start: dict[str, Any]) -> dict[str, Any]:
    recs = [seeds[s] for s in sorted(seeds)]
    runs = [per_run(r, start) for r in recs]
    row: dict[str, Any] = {"seeds": sorted(seeds)}
    row["win_vs_sft"] = clip(crossed_interval([r["outcomes_vs_sft"] for r in recs]), 0.0, 1.0).to_dict()
    row["kl"] = crossed_interval([r["kl_values"] for r in recs]).to_dict()
    for k in runs[0]:
        row[k] = seed_interval([x[k] for x in runs]).to_dict()
    finals = [x["dplus"] for x in runs]
    row["chosen_drift_sd"] = statistics.stdev(finals) if len(finals) >= 2 else float("nan")  # seed noise
    scales = [s for s in (sam_scale(r) for r in recs) if s]
    if scales:
        row["sam_first_order"] = _mean([s["first_order"] for s in scales])
        row["sam_measured"] = _mean([s["measured"] for s in scales])
    return row


def _diff(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    return [[x - y for x, y in zip(ra, rb, strict=True)] for ra, rb in zip(a, b, strict=True)]


def paired(
    a: dict[int, dict], b: dict[int, dict], start: dict[str, Any], against: str, level: float = 0.95
) -> dict[str, Any]:
    """``a`` against its plain run ``b`` (label ``against``) on their common seeds, in the shape
    ``experiments/verdicts.py`` reads."""
    common = sorted(set(a) & set(b))
    if not common:
        return {"seeds": []}

    def grid(runs: dict[int, dict], key: str) -> list[list[float]]:
        return [runs[s][key] for s in common]

    h2h = head_to_head(grid(a, "rewards"), grid(b, "rewards"))
    cells = [x for row in h2h for x in row if x == x]
    same = sum(x == y for s in common for x, y in zip(a[s]["samples"], b[s]["samples"], strict=True))
    gap, paired_sd = paired_gap(
        [(trajectory(a[s], start, "heldout", 0), trajectory(b[s], start, "heldout", 0)) for s in common]
    )
    ra, rb = [per_run(a[s], start) for s in common], [per_run(b[s], start) for s in common]
    out = {
        "against": against,
        "seeds": common,
        "level": level,
        "win": clip(crossed_interval(h2h, level=level), 0.0, 1.0).to_dict(),
        "ties": sum(x == 0.5 for x in cells) / max(1, len(cells)),
        "identical_samples": same / max(1, len(cells)),
        "win_vs_sft_diff": clip(
            crossed_interval(_diff(grid(a, "outcomes_vs_sft"), grid(b, "outcomes_vs_sft")), level=level), -1.0, 1.0
        ).to_dict(),
        "kl_diff": crossed_interval(_diff(grid(a, "kl_values"), grid(b, "kl_values")), level=level).to_dict(),
        "chosen_drift_gap": gap,
        "paired_drift_sd": paired_sd,
    }
    for k in ra[0]:
        out[k + "_diff"] = seed_interval([x[k] - y[k] for x, y in zip(ra, rb, strict=True)]).to_dict()
    return out


def analyse(out: str, setting: str, pilot_row: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rows, paired comparisons against each arm's plain run and one line per claim (the study's verdict rules)."""
    start, runs = load(out, setting)
    rows = {label: arm_row(seeds, start) for label, seeds in runs.items()}
    dpo = runs.get("dpo", {})
    plains = {lb: plain_of(lb) for lb in runs}
    pairs = {
        lb: paired(seeds, runs[pl], start, against=pl)
        for lb, seeds in runs.items()
        if (pl := plains[lb]) is not None and pl != lb and set(seeds) & set(runs.get(pl, {}))
    }
    rhos = {a.label: a.rho for a in MAIN_ARMS if a.rho and a.label in pairs}
    level = 1 - 0.05 / max(1, len(rhos))
    res: dict[str, Any] = {
        "setting": setting,
        "configs": rows,
        "paired": pairs,
        "rho_sweep_adjusted": {lb: paired(runs[lb], dpo, start, "dpo", level=level) for lb in rhos},
        "gate_shortfall": shortfall(pilot_row["measures"]) if pilot_row else "",
    }
    res["effect"], res["effect_text"] = effect_for(res, "dpo")
    res["effects"] = {pl: effect_for(res, pl)[1] for pl in NAMES if pl in rows}  # one per plain loss
    claims: list[dict[str, str]] = []

    def add(claim: str, verdict_: str, evidence: str) -> None:
        if res["gate_shortfall"] and verdict_ != "not measured":
            verdict_ += " (the setting did not meet the gate)"
        claims.append({"claim": claim, "verdict": verdict_, "evidence": evidence})

    def sam_claims(lb: str) -> None:  # logits-SAM against its plain loss: Fig. 1c and Table 1
        p, plain = pairs[lb], plain_of(lb)
        name = NAMES.get(plain, plain)
        v = verdict(p["dplus_diff"], 0.0, +1)
        m = mde(p["dplus_diff"])
        power = f"; minimal detectable effect at 80% power {m:.2g} nats" if m == m else ""
        over = f"t over {len(p['seeds'])} seeds" if len(p["seeds"]) > 1 else "1 seed: no interval over seeds"
        idle = noop(p, rows.get(plain)) if v != "not measured" else None  # one seed: no interval to judge
        add(
            f"{lb} reduces {name}'s held-out squeezing (Fig. 1c: Δ+ above {name}'s)",
            NOT_TESTABLE if idle else v,
            f"held-out Δ+ difference {_fmt(p['dplus_diff'])} nats ({over}{power}); training Δ+ "
            f"difference {_fmt(p['train_dplus_diff'])}; {name}'s own held-out Δ+ {_fmt(rows[plain]['dplus'])}"
            + (f"; {idle}" if idle else ""),
        )
        add(f"{lb} raises {name}'s win rate against SFT (Table 1)", *win_verdict(p, f"{lb} − {plain}", res, plain))

    for lb in rhos:
        sam_claims(lb)
    if len(rhos) >= 2:
        sweep = sorted((r, lb) for lb, r in rhos.items())
        add("some ρ raises DPO's win rate against SFT (Table 3)", *sweep_verdict(res, sweep))
    for lb in (a.label for a in CONTROL_ARMS):
        if lb in pairs:
            p = pairs[lb]
            claims.append({
                "claim": f"control: {lb} against DPO",
                "verdict": "measured",
                "evidence": f"held-out Δ+ difference {_fmt(p['dplus_diff'])} nats; win-rate gain "
                f"{_fmt(p['win_vs_sft_diff'], pct=True, signed=True)} pp; KL difference {_fmt(p['kl_diff'])}; "
                f"{len(p['seeds'])} seed(s) shared with DPO, {p['identical_samples']:.0%} identical samples",
            })  # fmt: skip
    for lb in (a.label for a in STAGE2_ARMS if a.rho and a.label in pairs):  # the second stage
        sam_claims(lb)
    res["claims"] = claims
    return res
