"""The displacement pilot: plain DPO on swap pairs over a small grid, each run read against the gate.

``python -m experiments.displacement.pilot --out DIR`` (resumable: finished runs are kept;
``DIR/pilot.md`` and ``DIR/pilot.json`` are rewritten after each run). The grid is the axes the
literature names for likelihood displacement on minimal-edit pairs (Pal et al. 2024; Razin et al.
2024) and our first pilot (docs/design.md §10): epochs over the same pairs, learning rate, how many
pairs. The pick rule, fixed before any run of this grid was seen: among settings that meet the gate,
the cheapest (training tokens), ties to the larger fall of the chosen; if none meets it, no pick (the
main comparison does not run, and the report says so with the grid's numbers).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from experiments.displacement.experiment import DisplacementExperiment, displacement_shared
from experiments.displacement.gate import gate, measures, shortfall
from experiments.squeeze.experiment import Arm, Setting, load_json, write_json
from experiments.squeeze.pilot import _e

GRID = (
    Setting("swap-128x3", pairs="swap", n_train=128, epochs=3),
    Setting("swap-128x3-lr1e-4", pairs="swap", n_train=128, epochs=3, lr=1e-4),
    Setting("swap-256x2", pairs="swap", n_train=256, epochs=2),
    Setting("swap-128x3-lr2e-5", pairs="swap", n_train=128, epochs=3, lr=2e-5),
)
DPO = Arm("dpo")
SEED = 0


def cost(s: Setting) -> float:
    """Training tokens, relative: pairs × epochs × response length."""
    return s.n_train * s.epochs * s.new_tokens


def choose(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The pilot's pick among finished rows (rule in the module docstring); None when none meets the gate."""
    passed = [r for r in rows if r["gate"]["passed"]]
    if not passed:
        return None
    return min(passed, key=lambda r: (cost(Setting(**r["setting"])), r["measures"]["train_dplus"]["mean"]))


def rows(out: str, grid: tuple[Setting, ...] = GRID) -> list[dict[str, Any]]:
    """One row per finished pilot run: setting, measures, gate."""
    found = []
    for s in grid:
        path = os.path.join(out, "runs", s.name, f"{DPO.label}_s{SEED}", "record.json")
        start = os.path.join(out, "shared", f"{s.name}.json")
        if os.path.exists(path) and os.path.exists(start):
            m = measures(load_json(path), load_json(start))
            found.append({"setting": load_json(path)["setting"], "measures": m, "gate": gate(m)})
    return found


def table(found: list[dict[str, Any]]) -> str:
    cols = (
        "setting",
        "pairs × epochs",
        "lr",
        "train Δ+ (nats)",
        "share Δ+ < 0",
        "train Δ−",
        "margin Δ+ − Δ−",
        "control drift",
        "Δ+ − control",
        "Δ+ prefix / differ / suffix",
        "held-out Δ+",
        "win vs SFT %",
        "KL",
        "min",
        "gate",
    )
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for r in found:
        s, m = r["setting"], r["measures"]
        verdict = "**met**" if r["gate"]["passed"] else "not met: " + shortfall(m)
        regions = " / ".join(f"{m[f'train_dplus_{k}']['mean']:+.1f}" for k in ("prefix", "differ", "suffix"))
        lines.append(
            f"| {s['name']} | {s['n_train']} × {s['epochs']:g} | {s['lr']:g} | {_e(m['train_dplus'])} | "
            f"{100 * m['train_share_falling']:.0f}% | {_e(m['train_dminus'])} | {_e(m['train_margin'])} | "
            f"{_e(m['control_drift'])} | {_e(m['dplus_minus_control'])} | {regions} | {_e(m['heldout_dplus'])} | "
            f"{_e(m['win_vs_sft'], pct=True)} | {m['kl']:.2f} | {(m['seconds'] or 0) / 60:.1f} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def write_summary(out: str, grid: tuple[Setting, ...] = GRID) -> dict[str, Any]:
    found = rows(out, grid)
    pick = choose(found)
    summary = {"rows": found, "pick": pick["setting"]["name"] if pick else None, "complete": len(found) == len(grid)}
    write_json(os.path.join(out, "pilot.json"), summary)
    status = f"{len(found)} of {len(grid)} settings run"
    picked = f"pick: **{summary['pick']}**" if pick else "no setting meets the gate yet"
    with open(os.path.join(out, "pilot.md"), "w", encoding="utf-8") as f:
        f.write(
            f"# Displacement pilot (plain DPO on swap pairs, seed {SEED})\n\n{status}; {picked} "
            "(gate: displacement/gate.py; pick rule: displacement/pilot.py)\n\n"
            "Δ± are per response, summed over its tokens, on the 64 probed training pairs (the pairs trained "
            "on), at the end of training; control drift is the mean drift of two of the starting model's own "
            "samples of each probed prompt (in no pair); intervals are 95% t over pairs (win rate: over "
            "prompts).\n\n" + table(found)
        )
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="", help="comma-separated setting names (default: the whole grid)")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    exp = DisplacementExperiment(a.out, displacement_shared(device=a.device))
    only = set(filter(None, a.only.split(",")))
    for s in GRID:
        if only and s.name not in only:
            continue
        exp.run(s, DPO, SEED)
        print(table(write_summary(a.out)["rows"]), flush=True)
    print(write_summary(a.out))


if __name__ == "__main__":
    main()
