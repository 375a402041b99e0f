"""``logitsam toy``: simulate the toy dynamics, plot them and run the theorem checks (summary.json, toy.png)."""

from __future__ import annotations

import json
import os

from logitsam.theory.checks import run_all
from logitsam.theory.toy import ToyConfig, plot, simulate


def run_toy(out_dir: str, cfg: ToyConfig | None = None, *, checks: bool = True) -> dict:
    """Simulate, plot and (optionally) run the theorem checks; writes toy.png and summary.json."""
    cfg = cfg or ToyConfig()
    os.makedirs(out_dir, exist_ok=True)
    trajs = simulate(cfg)
    plot(trajs, cfg, os.path.join(out_dir, "toy.png"))
    summary: dict = {"settings": cfg.to_dict()}
    for name, traj in trajs.items():
        summary[name] = {"p0_final": traj.probs[-1][cfg.sft_class], "p_final": traj.probs[-1]}
    summary["prediction_holds"] = (
        summary["sam_pos"]["p0_final"] > summary["gd"]["p0_final"] > summary["sam_neg"]["p0_final"]
    )
    if checks:
        results = run_all()
        summary["checks"] = results
        summary["thm32_remainder_slope"] = results["thm32"]["slope"]
        summary["cor36_pass_rate"] = results["cor36"]["pass_rate"]
        summary["cor36_instances"] = results["cor36"]["instances"]
    summary["trajectories"] = {k: {"probs": t.probs, "modes": t.modes} for k, t in trajs.items()}
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary
