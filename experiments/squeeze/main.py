"""The main comparison in the pilot's setting: DPO vs DPO + logits-SAM across the paper's ρ band, with controls.

``python -m experiments.squeeze.main --out DIR --pilot PILOT_DIR`` runs the plan in order,
resumably (finished runs are kept). Fixed before running (issue 16):
- setting: the pilot's pick (pilot.json), unless ``--setting`` names another grid setting;
- arms and seeds: DPO and DPO + logits-SAM at ρ = 1e-3, 1e-2, 1e-4 on 5 fresh seeds (1–5; the pilot
  used seed 0), then the controls on seeds 1–3: Gate-DPO (squeeze-targeting), DPO at half the
  learning rate ("it just moves less"), full-model SAM (ρ = 1e-2);
- order: seed by seed within the main arms, so a stopped run has balanced comparisons; the controls
  seed by seed too, full SAM first from seed 2 on (plan.py);
- second stage, after all of the above ("if time allows"): SLiC-HF and CPO ± logits-SAM at the paper's
  Table 6 proportions to DPO's ρ = 1e-2 (SLiC-HF 1e-1, CPO 1e-2), seeds 1–3, each paired with its own
  plain loss — **stopped** after 3 of its 12 runs (issue 30: a drift setting cannot test squeezing; the
  finished runs are kept and labelled in the report);
- measurements: Δ± per pair on the held-out pairs and the probed training pairs at 1/3, 2/3 and the
  end; win rate against SFT and KL on the ≥ 1,000 held-out prompts (held-out subjects); the
  first-order loss increase ρ‖g‖/L of each ρ at step 1 (from the logged ``sam/*``).
"""

from __future__ import annotations

import argparse
import os

from experiments.squeeze.experiment import Experiment, Setting, load_json
from experiments.squeeze.pilot import GRID
from experiments.squeeze.plan import MAIN_ARMS, main_shared, plan
from experiments.squeeze.report import pilot_figure, write_main_report


def setting_of(pilot_dir: str | None, name: str | None) -> Setting:
    if name is None:
        if pilot_dir is None:
            raise SystemExit("--pilot DIR or --setting NAME is required")
        name = load_json(os.path.join(pilot_dir, "pilot.json"))["pick"]
    by = {s.name: s for s in GRID}
    if name not in by:
        raise SystemExit(f"--setting: one of {', '.join(by)}, got {name!r}")
    return by[name]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--pilot", default=None, help="the pilot directory (its pick is the setting)")
    ap.add_argument("--setting", default=None, help="a grid setting's name instead of the pilot's pick")
    ap.add_argument("--limit", type=int, default=0, help="stop after this many new runs (0: all)")
    ap.add_argument("--no-stage2", action="store_true", help="(the default now: the second stage is stopped)")
    ap.add_argument("--report-only", action="store_true", help="rewrite report.md from the finished runs")
    a = ap.parse_args(argv)
    setting = setting_of(a.pilot, a.setting)
    if a.report_only:
        if a.pilot:
            pilot_figure(a.pilot)
        print(write_main_report(a.out, setting.name, a.pilot))
        return
    exp = Experiment(a.out, main_shared())
    done = 0
    # the second stage is stopped (issue 30: this drift setting cannot test squeezing); its finished runs stay
    # in the report, labelled; --no-stage2 is kept so old command lines still parse
    for arm, seed in plan():
        fresh = not os.path.exists(exp.record_path(setting, arm, seed))
        rec = exp.run(setting, arm, seed)
        if fresh:
            done += 1
            print(f"{setting.name}/{arm.label}/s{seed}: {rec['seconds'] / 60:.1f} min", flush=True)
            if os.path.exists(exp.record_path(setting, MAIN_ARMS[0], seed)):
                write_main_report(a.out, setting.name, a.pilot)
            if a.limit and done >= a.limit:
                break


if __name__ == "__main__":
    main()
