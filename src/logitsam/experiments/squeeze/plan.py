"""What the main comparison runs: arms, seeds and their order (fixed before running; see main.py)."""

from __future__ import annotations

from typing import Any

from logitsam.experiments.squeeze.experiment import Arm, Shared

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
    return Shared(n_heldout_pairs=200, n_train_probe=32, n_win_prompts=1080, probe_mid_pairs=64)


def plan(main_seeds: tuple[int, ...] = MAIN_SEEDS, control_seeds: tuple[int, ...] = CONTROL_SEEDS) -> list:
    """[(arm, seed)] in execution order."""
    out = [(a, s) for s in main_seeds for a in MAIN_ARMS]
    # controls seed by seed, full SAM first within a seed (from seed 2 on: reordered after seed 1, so that a
    # session that cannot finish all nine gives full SAM, the only control about SAM itself, its 3 seeds;
    # the set of runs is unchanged)
    first = [a for a in CONTROL_ARMS if a.mode == "full"]
    order = first + [a for a in CONTROL_ARMS if a not in first]
    return out + [(a, s) for s in control_seeds for a in (CONTROL_ARMS if s == control_seeds[0] else order)]


def sam_scale(rec: dict[str, Any]) -> dict[str, float] | None:
    """ρ‖g‖/L (first-order relative loss increase) and the measured (L(W+ε) − L)/L at step 1."""
    first = next((r for r in rec["log"] if "sam/grad_norm" in r), None)
    if first is None or not first.get("sam/loss_pre"):
        return None
    rho, g, pre = rec["arm"]["rho"], first["sam/grad_norm"], first["sam/loss_pre"]
    return {"first_order": rho * g / pre, "measured": (first["sam/loss_post"] - pre) / pre, "grad_norm": g}
