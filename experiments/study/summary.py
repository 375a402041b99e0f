"""Everything a study directory says, in one dict (results.json's body): estimates, comparisons, claims."""

from __future__ import annotations

from typing import Any

from experiments.stats import clip, crossed_interval
from experiments.study.analysis import (
    PLAIN,
    config_row,
    load_all,
    matched,
    paired,
    pick,
)
from experiments.study.claims import claims
from experiments.study.confirm import confirmation
from experiments.study.plan import CONFIRM, GROUPS, TUNING_NOTE


def analyse(out: str) -> dict[str, Any]:
    """Every estimate, comparison and claim of a study directory (the body of results.json)."""
    shared, runs, fresh = load_all(out)
    rows = {label: config_row(label, seeds) for label, seeds in runs.items()}
    sft = {
        "win_vs_chosen": clip(crossed_interval([shared["sft_vs_chosen"]]), 0.0, 1.0).to_dict(),
        "reward": crossed_interval([shared["sft_rewards"]]).to_dict(),
    }
    pairs = {}
    for label in runs:
        partner = PLAIN.get(label)
        if partner and partner in runs and set(runs[label]) & set(runs[partner]):  # comparable on some seed
            pairs[label] = {"against": partner, **paired(runs[label], runs[partner])}
    # the ρ sweep: its best value is picked after looking, so it is judged at a Bonferroni level
    sweep = [lb for lb in pairs if lb.startswith("dpo+lsam(")]
    level = 1 - 0.05 / max(1, len(sweep))
    adjusted = {lb: paired(runs[lb], runs["dpo"], level=level) for lb in sweep}
    best = pick({lb: pairs[lb]["win_vs_sft_diff"]["mean"] for lb in sweep})  # best_of_sweep on every seed
    lsam = next((lb for lb in runs if lb.startswith("dpo+lsam(") and lb in pairs and lb.endswith("(1e-1)")), None)
    control = {}
    if lsam and "dpo" in runs:
        control = matched(runs[lsam], runs["dpo"], runs.get("dpo(lr×0.5)", {}))
        if set(runs.get("dpo(lr×0.5)", {})) & set(runs[lsam]):
            control["vs_small_step"] = paired(runs[lsam], runs["dpo(lr×0.5)"])
    res = {
        "description": shared["description"],
        "tuning": TUNING_NOTE if shared["settings"].get("model") != "tiny-random" else "none (a pipeline check)",
        "prompts": len(shared["prompts"]),
        "chosen_prompts": len(shared["chosen_prompts"]),
        "pairs": shared["pairs"],
        "planned_seeds": list(shared["settings"]["seeds"]),
        "hessian_pairs": shared["settings"].get("hessian_pairs"),
        "reward_name": {"vader": "VADER", "letters": "letters reward"}.get(shared["settings"].get("reward"), "reward"),
        "quick": shared["settings"].get("model") == "tiny-random",
        "sft": sft,
        "configs": rows,
        "paired": pairs,
        "rho_sweep_adjusted": adjusted,
        "rho_best": best,
        "confirmation": confirmation(out, runs, fresh, shared),
        "confirm_planned": CONFIRM in shared["settings"].get("groups", (*GROUPS, CONFIRM)),
        # the configurations of the groups the study was started with (runs of others count too)
        "planned": [c.label for g in shared["settings"].get("groups", GROUPS) if g in GROUPS for c in GROUPS[g]],
        "matched_movement": control,
    }
    res["claims"] = claims(res)
    return res
