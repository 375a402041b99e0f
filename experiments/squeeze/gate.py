"""The squeeze gate, fixed before the main comparison runs (issue 16; docs/design.md §9).

A setting "squeezes" when plain DPO, at the end of training, shows all of:
1. held-out chosen drift Δ+ (mean over held-out pairs of log π_T(y+) − log π_0(y+)) ≤ ``DELTA_PLUS``
   nats, its 95% t interval over pairs below 0;
2. the distribution collapses on held-out responses: top-token probability up (interval above 0)
   or entropy down (interval below 0), per pair averaged over its two responses;
3. training chosen log-probs fall (Fig. 1c): Δ+ on the probed training pairs, interval below 0;
4. there is something to improve: DPO's win rate against the SFT model ≥ ``WIN`` (ties count ½).
Intervals over pairs describe one run; a pilot runs one seed per setting, so the gate reads one run.
"""

from __future__ import annotations

from typing import Any

from experiments.stats import Estimate, seed_interval

DELTA_PLUS = -5.0  # nats per response (≈ −0.16 nats per token at 32 tokens)
WIN = 0.60


def _final(rec: dict[str, Any]) -> dict[str, Any]:
    return rec["probes"][max(rec["probes"], key=int)]


def change(rec: dict[str, Any], start: dict[str, Any], part: str, stat: str, side: int | None) -> list[float]:
    """Per pair: final − start of ``stat`` on probe set ``part``; side 0 chosen, 1 rejected, None both averaged."""
    a, b = start["stats"][part][stat], _final(rec)[part][stat]
    if side is None:
        return [(y[0] + y[1] - x[0] - x[1]) / 2 for x, y in zip(a, b, strict=True)]
    return [y[side] - x[side] for x, y in zip(a, b, strict=True)]


def trajectory(rec: dict[str, Any], start: dict[str, Any], part: str, side: int) -> dict[int, float]:
    """{step: mean Δ over the pairs probed at every step} from step 0 (Δ = 0) to the end (the main comparison
    probes a subset of the held-out pairs mid-run and all of them at the end: the curve uses the subset)."""
    base = start["stats"][part]["logp"]
    k = min(len(p[part]["logp"]) for p in rec["probes"].values())
    out = {0: 0.0}
    for step, probe in rec["probes"].items():
        d = [y[side] - x[side] for x, y in zip(base[:k], probe[part]["logp"][:k], strict=True)]
        out[int(step)] = sum(d) / len(d)
    return dict(sorted(out.items()))


def win_rate(rec: dict[str, Any]) -> Estimate:
    """Win rate against SFT over the held-out prompts (t interval over prompts; ties ½)."""
    return seed_interval([x for x in rec["outcomes_vs_sft"] if x == x])


def measures(rec: dict[str, Any], start: dict[str, Any]) -> dict[str, Any]:
    """Everything the gate reads, plus what readers want beside it (per-token drift, KL, Δ−)."""
    tokens = [x[0] for x in start["stats"]["heldout"]["tokens"]]
    dplus = change(rec, start, "heldout", "logp", 0)
    kl = rec.get("kl_values") or []
    return {
        "heldout_dplus": seed_interval(dplus).to_dict(),
        "heldout_dplus_per_token": sum(dplus) / max(1.0, sum(tokens)),
        "heldout_dminus": seed_interval(change(rec, start, "heldout", "logp", 1)).to_dict(),
        "heldout_top_change": seed_interval(change(rec, start, "heldout", "top", None)).to_dict(),
        "heldout_entropy_change": seed_interval(change(rec, start, "heldout", "entropy", None)).to_dict(),
        "train_dplus": seed_interval(change(rec, start, "train", "logp", 0)).to_dict(),
        "train_dminus": seed_interval(change(rec, start, "train", "logp", 1)).to_dict(),
        "win_vs_sft": win_rate(rec).to_dict(),
        "kl": sum(kl) / max(1, len(kl)),
        "seconds": rec.get("seconds"),
    }


def gate(m: dict[str, Any]) -> dict[str, bool]:
    """Each criterion of the gate on ``measures``' output; ``passed`` when all hold."""
    d, top, ent, tr = m["heldout_dplus"], m["heldout_top_change"], m["heldout_entropy_change"], m["train_dplus"]
    out = {
        "heldout_dplus": d["mean"] <= DELTA_PLUS and d["high"] < 0,
        "collapse": top["low"] > 0 or ent["high"] < 0,
        "train_chosen_falls": tr["high"] < 0,
        "dpo_beats_sft": m["win_vs_sft"]["mean"] >= WIN,
    }
    out["passed"] = all(out.values())
    return out


def shortfall(m: dict[str, Any]) -> str:
    """The failed criteria in words ('' when the gate is met): every verdict in a failing setting carries it."""
    g = gate(m)

    def nats(e: dict[str, float]) -> str:
        return f"{e['mean']:+.2f} [{e['low']:+.2f}, {e['high']:+.2f}] nats"

    words = {
        "heldout_dplus": f"held-out Δ+ {nats(m['heldout_dplus'])} (gate ≤ {DELTA_PLUS:g}, interval < 0)",
        "collapse": "no collapse of held-out next-token distributions",
        "train_chosen_falls": f"training Δ+ {nats(m['train_dplus'])} (gate: interval below 0)",
        "dpo_beats_sft": f"DPO vs SFT {100 * m['win_vs_sft']['mean']:.1f}% (gate ≥ {100 * WIN:.0f}%)",
    }
    return "; ".join(v for k, v in words.items() if not g[k])
