"""The main comparison in the pilot's setting: DPO vs DPO + logits-SAM across the paper's ρ band, with controls.

``python -m logitsam.experiments.squeeze.main --out DIR --pilot PILOT_DIR`` runs the plan in order,
resumably (finished runs are kept). Fixed before running (issue 16):
- setting: the pilot's pick (pilot.json), unless ``--setting`` names another grid setting;
- arms and seeds: DPO and DPO + logits-SAM at ρ = 1e-3, 1e-2, 1e-4 on 5 fresh seeds (1–5; the pilot
  used seed 0), then the controls on seeds 1–3: Gate-DPO (squeeze-targeting), DPO at half the
  learning rate ("it just moves less"), full-model SAM (ρ = 1e-2);
- order: seed by seed within the main arms, so a stopped run has balanced comparisons;
- measurements: Δ± per pair on the held-out pairs and the probed training pairs at 1/3, 2/3 and the
  end; win rate against SFT and KL on the ≥ 1,000 held-out prompts (held-out subjects); the
  first-order loss increase ρ‖g‖/L of each ρ at step 1 (from the logged ``sam/*``).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from logitsam.experiments.squeeze.experiment import Arm, Experiment, Setting, Shared, _read_json
from logitsam.experiments.squeeze.pilot import GRID

MAIN_SEEDS = (1, 2, 3, 4, 5)
CONTROL_SEEDS = (1, 2, 3)
RHOS = (1e-3, 1e-2, 1e-4)


def rho_label(rho: float) -> str:
    return f"{rho:.0e}".replace("e-0", "e-").replace("e+0", "e")


MAIN_ARMS = (Arm("dpo"), *(Arm(f"dpo+lsam({rho_label(r)})", rho=r) for r in RHOS))
CONTROL_ARMS = (
    Arm("gate_dpo", loss="gate_dpo"),
    Arm("dpo(lr×0.5)", lr_scale=0.5),
    Arm("dpo+fullsam(1e-2)", rho=1e-2, mode="full"),
)


def main_shared() -> Shared:
    """The main comparison's measurement sizes (the pilot's are smaller)."""
    return Shared(n_heldout_pairs=200, n_train_probe=32, n_win_prompts=1080)


def plan(main_seeds: tuple[int, ...] = MAIN_SEEDS, control_seeds: tuple[int, ...] = CONTROL_SEEDS) -> list:
    """[(arm, seed)] in execution order."""
    out = [(a, s) for s in main_seeds for a in MAIN_ARMS]
    return out + [(a, s) for s in control_seeds for a in CONTROL_ARMS]


def setting_of(pilot_dir: str | None, name: str | None) -> Setting:
    if name is None:
        if pilot_dir is None:
            raise SystemExit("--pilot DIR or --setting NAME is required")
        name = _read_json(os.path.join(pilot_dir, "pilot.json"))["pick"]
    by = {s.name: s for s in GRID}
    if name not in by:
        raise SystemExit(f"--setting: one of {', '.join(by)}, got {name!r}")
    return by[name]


def sam_scale(rec: dict[str, Any]) -> dict[str, float] | None:
    """ρ‖g‖/L (first-order relative loss increase) and the measured (L(W+ε) − L)/L at step 1."""
    first = next((r for r in rec["log"] if "sam/grad_norm" in r), None)
    if first is None or not first.get("sam/loss_pre"):
        return None
    rho, g, pre = rec["arm"]["rho"], first["sam/grad_norm"], first["sam/loss_pre"]
    return {"first_order": rho * g / pre, "measured": (first["sam/loss_post"] - pre) / pre, "grad_norm": g}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--pilot", default=None, help="the pilot directory (its pick is the setting)")
    ap.add_argument("--setting", default=None, help="a grid setting's name instead of the pilot's pick")
    ap.add_argument("--limit", type=int, default=0, help="stop after this many new runs (0: all)")
    a = ap.parse_args(argv)
    setting = setting_of(a.pilot, a.setting)
    exp = Experiment(a.out, main_shared())
    done = 0
    for arm, seed in plan():
        fresh = not os.path.exists(exp.record_path(setting, arm, seed))
        rec = exp.run(setting, arm, seed)
        if fresh:
            done += 1
            print(f"{setting.name}/{arm.label}/s{seed}: {rec['seconds'] / 60:.1f} min", flush=True)
            if a.limit and done >= a.limit:
                break


if __name__ == "__main__":
    main()
