"""The pilot: plain DPO over a small grid of settings, each read against the gate (gate.py).

Run ``python -m experiments.squeeze.pilot --out DIR`` (resumable: finished runs are kept).
The grid covers the axes issue 16 names: pair kind (on-policy, off-policy, similar off-policy),
epochs, learning rate and response length. After each run ``DIR/pilot.md`` and ``DIR/pilot.json``
are rewritten, so an interrupted pilot still has its table. The main comparison runs in the setting
``choose`` picks — a rule fixed before any pilot run was seen:
  among settings that meet the gate, the cheapest (training tokens); ties to the stronger squeeze;
  if none meets it, the one failing fewest criteria, then the most negative held-out Δ+.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from experiments.squeeze.experiment import Arm, Experiment, Setting, Shared, load_json, write_json
from experiments.squeeze.gate import gate, measures, shortfall

GRID = (
    Setting("onpolicy-1ep", pairs="onpolicy"),
    Setting("offpolicy-1ep"),
    Setting("offpolicy-3ep", epochs=3),
    Setting("onpolicy-3ep", pairs="onpolicy", epochs=3),
    Setting("offpolicy-1ep-lr1e-4", lr=1e-4),
    Setting("similar-2ep", pairs="similar", epochs=2),
    Setting("offpolicy-16tok-2ep", new_tokens=16, epochs=2),
)
DPO = Arm("dpo")
SEED = 0


def cost(s: Setting) -> float:
    """Training tokens, relative: pairs × epochs × response length."""
    return s.n_train * s.epochs * s.new_tokens


def choose(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The pilot's pick (rule in the module docstring) among finished rows."""
    if not rows:
        return None
    passed = [r for r in rows if r["gate"]["passed"]]
    if passed:
        return min(passed, key=lambda r: (cost(Setting(**r["setting"])), r["measures"]["heldout_dplus"]["mean"]))
    fails = {r["setting"]["name"]: sum(not v for k, v in r["gate"].items() if k != "passed") for r in rows}
    return min(rows, key=lambda r: (fails[r["setting"]["name"]], r["measures"]["heldout_dplus"]["mean"]))


def rows(out: str) -> list[dict[str, Any]]:
    """One row per finished pilot run: setting, measures, gate."""
    found = []
    for s in GRID:
        path = os.path.join(out, "runs", s.name, f"{DPO.label}_s{SEED}", "record.json")
        start = os.path.join(out, "shared", f"{s.name}.json")
        if os.path.exists(path) and os.path.exists(start):
            m = measures(load_json(path), load_json(start))
            found.append({"setting": load_json(path)["setting"], "measures": m, "gate": gate(m)})
    return found


def _e(d: dict[str, float], pct: bool = False) -> str:
    f = 100.0 if pct else 1.0
    if d["low"] != d["low"]:
        return f"{f * d['mean']:+.2f}"
    return f"{f * d['mean']:+.2f} [{f * d['low']:+.2f}, {f * d['high']:+.2f}]"


def table(found: list[dict[str, Any]]) -> str:
    head = (
        "| setting | pairs | epochs | lr | tokens | held-out Δ+ (nats) | per token | held-out Δ− | top-token Δ | "
        "entropy Δ | train Δ+ | win vs SFT % | KL | min | gate |\n" + "|---" * 15 + "|\n"
    )
    lines = []
    for r in found:
        s, m = r["setting"], r["measures"]
        verdict = "**met**" if r["gate"]["passed"] else "not met: " + shortfall(m)
        lines.append(
            f"| {s['name']} | {s['pairs']} | {s['epochs']:g} | {s['lr']:g} | {s['new_tokens']} | "
            f"{_e(m['heldout_dplus'])} | {m['heldout_dplus_per_token']:+.3f} | {_e(m['heldout_dminus'])} | "
            f"{_e(m['heldout_top_change'])} | {_e(m['heldout_entropy_change'])} | {_e(m['train_dplus'])} | "
            f"{_e(m['win_vs_sft'], pct=True)} | {m['kl']:.2f} | {(m['seconds'] or 0) / 60:.1f} | {verdict} |"
        )
    return head + "\n".join(lines) + "\n"


def write_summary(out: str) -> dict[str, Any]:
    found = rows(out)
    pick = choose(found)
    summary = {"rows": found, "pick": pick["setting"]["name"] if pick else None, "complete": len(found) == len(GRID)}
    write_json(os.path.join(out, "pilot.json"), summary)
    status = f"{len(found)} of {len(GRID)} settings run"
    picked = f"pick: **{summary['pick']}**" if pick else "no pick yet"
    with open(os.path.join(out, "pilot.md"), "w", encoding="utf-8") as f:
        f.write(f"# Squeeze pilot (plain DPO, seed {SEED})\n\n{status}; {picked} (rule: pilot.py)\n\n{table(found)}")
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="", help="comma-separated setting names (default: the whole grid)")
    a = ap.parse_args(argv)
    exp = Experiment(a.out, Shared())
    only = set(filter(None, a.only.split(",")))
    for s in GRID:
        if only and s.name not in only:
            continue
        exp.run(s, DPO, SEED)
        print(table(write_summary(a.out)["rows"]), flush=True)
    print(write_summary(a.out))


if __name__ == "__main__":
    main()
