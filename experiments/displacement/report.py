"""The displacement main comparison's report.md, recomputed from the records (analysis.py)."""

from __future__ import annotations

import json
import os
from typing import Any

from experiments.displacement.analysis import analyse
from experiments.displacement.plan import ORDER, SEEDS
from experiments.verdicts import _fmt


def _n(e: dict[str, Any] | None, pct: bool = False) -> str:
    return _fmt(e, pct=pct, digits=1) if e else "–"


def arms_table(res: dict[str, Any]) -> str:
    cols = ("arm", "seeds", "train Δ+", "train Δ−", "margin", "control drift", "Δ+ − control",
            "Δ+ prefix / differ / suffix", "held-out Δ+", "win vs SFT %", "KL", "ρ‖g‖/L", "(L(W+ε)−L)/L")  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for lb, r in res["configs"].items():
        regions = " / ".join(
            f"{r[k]['mean']:+.1f}" if k in r else "–"
            for k in ("train_dplus_prefix", "train_dplus_differ", "train_dplus_suffix")
        )
        sam = (f"{r['sam_first_order']:.3g}", f"{r['sam_measured']:.3g}") if "sam_first_order" in r else ("–", "–")
        lines.append(
            f"| {lb} | {len(r['seeds'])} | {_n(r['train_dplus'])} | {_n(r['train_dminus'])} | "
            f"{_n(r['train_margin'])} | "
            f"{_n(r['control_drift'])} | {_n(r['dplus_minus_control'])} | {regions} | {_n(r['heldout_dplus'])} | "
            f"{_n(r['win_vs_sft'], pct=True)} | {_n(r['kl'])} | {sam[0]} | {sam[1]} |"
        )
    return "\n".join(lines) + "\n"


def paired_table(res: dict[str, Any]) -> str:
    cols = ("arm − DPO", "seeds", "train Δ+ (matched steps)", "train Δ+ (matched KL)", "KL", "control drift",
            "win vs SFT pp", "identical samples")  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for lb, p in res["paired"].items():
        mk = p["matched_kl"]
        out = f" ({len(mk['seeds_outside'])} seed(s) outside the frontier)" if mk["seeds_outside"] else ""
        lines.append(
            f"| {lb} | {len(p['seeds'])} | {_n(p['train_dplus_diff'])} | {_n(mk['diff'])}{out} | {_n(p['kl_diff'])} | "
            f"{_n(p['control_drift_diff'])} | {_fmt(p['win_vs_sft_diff'], pct=True, signed=True)} | "
            f"{100 * p['identical_samples']:.0f}% |"
        )
    return "\n".join(lines) + "\n"


def write_report(out: str, setting: str, pilot_dir: str | None = None) -> str:
    res = analyse(out, setting)
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
    done = sum(len(r["seeds"]) for r in res["configs"].values())
    claims = "\n".join(f"- **{c['claim']}**: {c['verdict']}. {c['evidence']}" for c in res["claims"])
    pilot = f" Pilot: `{pilot_dir}/pilot.md`." if pilot_dir else ""
    text = (
        f"# Displacement main comparison (setting {setting})\n\n"
        f"{done} of {len(ORDER) * len(SEEDS)} planned runs finished (plan: displacement/plan.py; rules fixed before "
        f"the runs: docs/design.md §10).{pilot} Δ± are summed over a response, on the 64 probed training pairs "
        "(the pairs trained on), final − start; control drift: two of the starting model's own samples of each "
        "probed prompt, in no pair. Intervals: t over seeds (win rate, KL: crossed seeds × prompts); one seed has "
        "none. Matched KL: the arm's training Δ+ minus DPO's lr frontier (× 0.25, 0.5, 1, same seed) at the "
        f"arm's KL. Effect of interest for displacement: {res['displacement_effect']:.1f} nats (the larger of "
        f"2 nats and half DPO's own fall); for the win rate: {res['effect_text']}.\n\n"
        f"## Claims\n\n{claims or '- none yet (no logits-SAM arm shares a seed with DPO)'}\n\n"
        f"## Arms\n\n{arms_table(res)}\n## Against DPO\n\n{paired_table(res)}"
    )
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write(text)
    return text
