"""Displacement measures and the gate, fixed before the main comparison runs (issue 30; docs/design.md §10).

A setting *displaces* when plain DPO, at the end of training, shows both:
1. the chosen response's log-prob falls on the pairs it trains on: Δ+ on the probed training pairs
   (log π_T(y+) − log π_0(y+), summed over the response) has its 95% t interval over pairs below 0;
2. DPO is clearly better than SFT on the task: its win rate against the SFT model's samples (VADER,
   ties ½) has its 95% interval over prompts above 50%.
Beside every Δ± the report gives what separates displacement from drift: the control text's drift
(the model's own samples of the same prompts, in no pair), the KL to the start, the margin Δ+ − Δ−,
and where the fall sits (shared prefix / differing tokens / shared suffix of each pair).
"""

from __future__ import annotations

from typing import Any

from experiments.squeeze.gate import win_rate
from experiments.stats import seed_interval


def _final(rec: dict[str, Any]) -> dict[str, Any]:
    return rec["probes"][max(rec["probes"], key=int)]


def per_pair(rec: dict[str, Any], start: dict[str, Any], part: str, stat: str, side: int | None) -> list[float]:
    """Per pair, final − start of ``stat`` on probe set ``part``: side 0 chosen, 1 rejected, None the mean
    of both sides."""
    a, b = start["stats"][part][stat], _final(rec)[part][stat]
    if side is None:
        return [(y[0] + y[1] - x[0] - x[1]) / 2 for x, y in zip(a, b, strict=True)]
    return [y[side] - x[side] for x, y in zip(a, b, strict=True)]


def measures(rec: dict[str, Any], start: dict[str, Any]) -> dict[str, Any]:
    """Every number the gate and the reports read (intervals over pairs, or over prompts for the win rate)."""
    dp, dm = per_pair(rec, start, "train", "logp", 0), per_pair(rec, start, "train", "logp", 1)
    ctl = per_pair(rec, start, "control", "logp", None)
    kl = rec.get("kl_values") or []
    out = {
        "train_dplus": seed_interval(dp).to_dict(),
        "train_dminus": seed_interval(dm).to_dict(),
        "train_margin": seed_interval([a - b for a, b in zip(dp, dm, strict=True)]).to_dict(),
        "train_share_falling": sum(x < 0 for x in dp) / max(1, len(dp)),
        "control_drift": seed_interval(ctl).to_dict(),
        "dplus_minus_control": seed_interval([a - c for a, c in zip(dp, ctl, strict=True)]).to_dict(),
        "heldout_dplus": seed_interval(per_pair(rec, start, "heldout", "logp", 0)).to_dict(),
        "heldout_dminus": seed_interval(per_pair(rec, start, "heldout", "logp", 1)).to_dict(),
        "win_vs_sft": win_rate(rec).to_dict(),
        "kl": sum(kl) / max(1, len(kl)),
        "seconds": rec.get("seconds"),
    }
    if "logp_prefix" in start["stats"]["train"]:
        for region in ("prefix", "differ", "suffix"):
            out[f"train_dplus_{region}"] = seed_interval(per_pair(rec, start, "train", f"logp_{region}", 0)).to_dict()
    return out


def gate(m: dict[str, Any]) -> dict[str, bool]:
    """Each criterion on :func:`measures`' output; ``passed`` when both hold."""
    out = {"train_chosen_falls": m["train_dplus"]["high"] < 0, "dpo_beats_sft": m["win_vs_sft"]["low"] > 0.5}
    out["passed"] = all(out.values())
    return out


def shortfall(m: dict[str, Any]) -> str:
    """The failed criteria in words ('' when the gate is met)."""
    g, d, w = gate(m), m["train_dplus"], m["win_vs_sft"]
    dplus = f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"
    words = {
        "train_chosen_falls": f"training Δ+ {dplus} nats (gate: interval < 0)",
        "dpo_beats_sft": f"DPO vs SFT {100 * w['mean']:.1f} [{100 * w['low']:.1f}, {100 * w['high']:.1f}]% "
        "(gate: interval > 50%)",
    }
    return "; ".join(v for k, v in words.items() if not g[k])
