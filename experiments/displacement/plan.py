"""What the displacement main comparison runs (fixed before its runs; docs/design.md §10).

Setting: the pilot's pick. Arms in this order of importance:
DPO; logits-SAM ρ = 1e-1; DPOP (λ 50, the positive control); DPO at half the learning rate; logits-SAM
ρ = 3e-2; DPO at a quarter of the learning rate; logits-SAM ρ = 3e-1; logits-SAM ρ = 1e-2; full-model SAM
ρ = 5e-2 (≈ logits-SAM 1e-1's first-order strength ρ‖g‖/L: full SAM's ‖g‖ was 2× logits-SAM's in the
squeeze setting; its own strength is logged and reported). The three DPO learning rates (×0.25, ×0.5,
×1) are the KL frontier against which every arm is also compared at matched KL.

Execution order (changed 2026-12-05 before any main run finished; the analysis is unchanged): arms in
blocks of that order — (DPO, ρ 1e-1), (DPOP, lr × 0.5), (ρ 3e-2, lr × 0.25), (ρ 3e-1, ρ 1e-2, full
SAM) — each block on seeds 1–3 before the next, then seeds 4–5. A 3-hour session on 2 cores finishes
about six runs, so a stopped session then holds the headline pair on 3 seeds (an interval) rather
than nine arms on one seed (none).
"""

from __future__ import annotations

from typing import Any

from experiments.squeeze.experiment import Arm, Shared
from experiments.squeeze.plan import rho_label

SEEDS = (1, 2, 3, 4, 5)
RHOS = (1e-2, 3e-2, 1e-1, 3e-1)


def lsam(rho: float) -> Arm:
    return Arm(f"dpo+lsam({rho_label(rho)})", rho=rho)


DPO = Arm("dpo")
DPOP = Arm("dpop", loss="dpop", params=(("lam", 50.0),))
HALF_LR, QUARTER_LR = Arm("dpo(lr×0.5)", lr_scale=0.5), Arm("dpo(lr×0.25)", lr_scale=0.25)
FULL_SAM = Arm("dpo+fullsam(5e-2)", rho=5e-2, mode="full")
ORDER = (DPO, lsam(1e-1), DPOP, HALF_LR, lsam(3e-2), QUARTER_LR, lsam(3e-1), lsam(1e-2), FULL_SAM)
FRONTIER = (QUARTER_LR, HALF_LR, DPO)  # plain DPO at lr × 0.25, 0.5, 1: the KL frontier


BLOCKS = (ORDER[0:2], ORDER[2:4], ORDER[4:6], ORDER[6:])
FIRST_SEEDS = 3


def plan(seeds: tuple[int, ...] = SEEDS) -> list[tuple[Arm, int]]:
    """[(arm, seed)] in execution order: each block of ORDER on the first three seeds, then the rest."""
    first, rest = seeds[:FIRST_SEEDS], seeds[FIRST_SEEDS:]
    runs = [(a, s) for block in BLOCKS for s in first for a in block]
    return runs + [(a, s) for s in rest for a in ORDER]


def main_shared(**kw: Any) -> Shared:
    """The main comparison's sizes: 64 trained pairs with control text, 64 held-out pairs, 512 held-out
    prompts (paired arms: seeds buy power, prompts past a few hundred little; design.md §10)."""
    return Shared(**{"n_heldout_pairs": 64, "n_train_probe": 64, "n_win_prompts": 512, **kw})
