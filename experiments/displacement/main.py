"""The displacement main comparison in the pilot's pick (plan.py; rules in docs/design.md §10).

``python -m experiments.displacement.main --out DIR --pilot PILOT_DIR`` runs the plan in order,
resumably (finished runs are kept) and rewrites ``DIR/report.md`` after each run. Refused when the pilot
has no pick (no setting met the gate): the pilot's grid is then the result.
"""

from __future__ import annotations

import argparse
import os

from experiments.displacement.experiment import DisplacementExperiment
from experiments.displacement.pilot import GRID
from experiments.displacement.plan import DPO, main_shared, plan
from experiments.displacement.report import write_report
from experiments.squeeze.experiment import load_json


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--pilot", required=True, help="the pilot directory (its pick is the setting)")
    ap.add_argument("--limit", type=int, default=0, help="stop after this many new runs (0: all)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    pick = load_json(os.path.join(a.pilot, "pilot.json"))["pick"]
    if pick is None:
        raise SystemExit(f"{a.pilot}/pilot.json: no setting met the gate, so there is no main comparison to run")
    setting = next(s for s in GRID if s.name == pick)
    if a.report_only:
        print(write_report(a.out, setting.name, a.pilot))
        return
    exp = DisplacementExperiment(a.out, main_shared(device=a.device))
    done = 0
    for arm, seed in plan():
        fresh = not os.path.exists(exp.record_path(setting, arm, seed))
        rec = exp.run(setting, arm, seed)
        if fresh:
            done += 1
            print(f"{setting.name}/{arm.label}/s{seed}: {rec['seconds'] / 60:.1f} min", flush=True)
            if os.path.exists(exp.record_path(setting, DPO, seed)):
                write_report(a.out, setting.name, a.pilot)
            if a.limit and done >= a.limit:
                break


if __name__ == "__main__":
    main()
