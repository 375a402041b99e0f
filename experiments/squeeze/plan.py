"""What the main comparison runs: arms, seeds and their order (fixed before running; see main.py)."""

from __future__ import annotations

from typing import Any

from experiments.squeeze.experiment import Arm, Shared

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


# The second stage (issue 16: "if time allows"), fixed before any of its runs: SLiC-HF and CPO with their
# registry defaults (SLiC-HF δ = 1, λ = 0.1; CPO λ = 1, β the setting's), each ± logits-SAM at the paper's
# Table 6 proportions to DPO's ρ (SLiC-HF 10×, CPO 1×). DPO's ρ is 1e-2, the only ρ of the sweep that is
# not a no-op here (1e-4 and 1e-3 leave ≥ 93% of samples identical to DPO's); untuned, like the paper's
# Table 6 transfer. Seed by seed, each plain loss beside its logits-SAM arm, after the first stage.
STAGE2_SEEDS = (1, 2, 3)
STAGE2_ARMS = (
    Arm("slic", loss="slic"),
    Arm("slic+lsam(1e-1)", loss="slic", rho=1e-1),
    Arm("cpo", loss="cpo"),
    Arm("cpo+lsam(1e-2)", loss="cpo", rho=1e-2),
)
ALL_ARMS = (*MAIN_ARMS, *CONTROL_ARMS, *STAGE2_ARMS)


def plain_of(label: str) -> str | None:
    """The plain run a planned arm is paired against: its own loss without SAM for the second stage, DPO
    for the main arms and controls; None for a label the plan does not know (left unpaired)."""
    arm = next((a for a in ALL_ARMS if a.label == label), None)
    if arm is None:
        return None
    return arm.loss if arm in STAGE2_ARMS else "dpo"


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


def stage2_plan(seeds: tuple[int, ...] = STAGE2_SEEDS) -> list:
    """[(arm, seed)] of the second stage, in execution order (after :func:`plan`)."""
    return [(a, s) for s in seeds for a in STAGE2_ARMS]


def sam_scale(rec: dict[str, Any]) -> dict[str, float] | None:
    """ρ‖g‖/L (first-order relative loss increase) and the measured (L(W+ε) − L)/L at step 1."""
    first = next((r for r in rec["log"] if "sam/grad_norm" in r), None)
    if first is None or not first.get("sam/loss_pre"):
        return None
    rho, g, pre = rec["arm"]["rho"], first["sam/grad_norm"], first["sam/loss_pre"]
    return {"first_order": rho * g / pre, "measured": (first["sam/loss_post"] - pre) / pre, "grad_norm": g}
