"""The confirmation of the ρ sweep's pick on fresh seeds: the pick, saved once, and its comparison.

The sweep (plan.SWEEP_GROUPS: DPO and DPO + logits-SAM at every ρ, on the study's seeds) picks ρ by
``analysis.best_of_sweep`` once all its runs are finished. The pick is written to ``DIR/confirm.json``
before the first confirmation run and reused on every resume, so adding seeds or runs later cannot
move it (a pick made after seeing confirmation results would not confirm anything). Confirmation runs
train on seeds no run of the plan used; a confirmation record on such a seed is not counted.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from experiments.records import write_json
from experiments.study.analysis import Runs, config_row, load, paired, pick, sweep_gains
from experiments.study.plan import CONFIRM, StudySettings
from experiments.study.records import read_json, record_path
from experiments.study.setup import RunSpec, StudyArm
from logitsam.errors import UserError

log = logging.getLogger(__name__)
PICK = "confirm.json"
PICK_KEYS = ("key", "label", "rho", "sweep_seeds", "gains")


def read_pick(out: str) -> dict[str, Any] | None:
    """DIR/confirm.json (the saved pick), None if there is none, UserError naming it if it is broken."""
    path = os.path.join(out, PICK)
    if not os.path.exists(path):
        return None
    return read_json(path, PICK_KEYS, "a study's saved pick", "delete it to pick ρ again from the finished sweep")


def _make_pick(runs: Runs, s: StudySettings) -> tuple[dict[str, Any] | None, str]:
    sweep = s.sweep_plan()
    todo = [spec.name for c, spec in sweep if spec.seed not in runs.get(c.label, {})]
    if todo:
        return None, (
            f"its ρ is picked when the sweep (groups dpo and rho on seeds {seed_list(s.seeds)}) is finished: "
            f"{len(todo)} of its runs are not"
        )
    labels = {c.label for c, _ in sweep}
    gains = sweep_gains({lb: r for lb, r in runs.items() if lb in labels}, list(s.seeds))
    label = pick(gains)
    if label is None:
        return None, "no ρ of the sweep has a win-rate gain to pick by"
    rho = next(c.rho for c, _ in sweep if c.label == label)
    return {"key": s.key(), "label": label, "rho": rho, "sweep_seeds": list(s.seeds), "gains": gains}, ""


def confirmation_plan(out: str, s: StudySettings, save: bool = False) -> tuple[list[tuple[StudyArm, RunSpec]], str]:
    """(DPO and DPO + logits-SAM at the picked ρ on the confirmation seeds, "") or ([], why not). The
    pick is the saved one, else made from the finished sweep (and saved with ``save``)."""
    if CONFIRM not in s.groups:
        return [], ""
    saved = read_pick(out)
    if saved is not None and saved["key"] != s.key():
        raise UserError(f"{os.path.join(out, PICK)}: picked under other study settings; delete it to pick again")
    _, runs = load(out)
    chosen, why = (saved, "") if saved is not None else _make_pick(runs, s)
    if chosen is None:
        return [], why
    used = {seed: rec["spec"]["name"] for by in runs.values() for seed, rec in by.items()}
    stale = [x for x in s.confirm_seeds if x in used or x in s.seeds]
    if stale:
        where = record_path(out, used[stale[0]]) if stale[0] in used else "this command's --seeds"
        return [], (
            f"confirmation seed {stale[0]} is not fresh (the plan trained on it: {where}); "
            "pass --confirm-seeds with seeds no run used"
        )
    if save and saved is None:
        write_json(os.path.join(out, PICK), chosen)
    return s.confirm_plan(chosen["rho"]), ""


def seed_list(seeds: Any) -> str:
    """Seeds as the report and messages write them: "5, 6, 7"."""
    return ", ".join(map(str, seeds))


def confirmation(out: str, runs: Runs, found: Runs, shared: dict[str, Any]) -> dict[str, Any]:
    """The confirmation's comparison for the report: the saved pick against DPO on the fresh seeds
    (paired, 95%), its rows, and the runs it counts. ``runs``: the plan's runs (their seeds are not
    fresh); ``found``: the confirmation runs. Records of another ρ than the saved pick's are named,
    not used."""
    pick = read_pick(out)
    used = {seed for by in runs.values() for seed in by}
    fresh = {lb: {x: r for x, r in by.items() if x not in used} for lb, by in found.items()}
    dropped = sorted({x for by in found.values() for x in by} & used)
    if dropped:
        log.warning("confirmation records on seeds the plan trained on (%s) are not fresh: left out", dropped)
    planned = list(shared["settings"].get("confirm_seeds", StudySettings.confirm_seeds))
    out_: dict[str, Any] = {"pick": pick, "planned_seeds": planned, "not_fresh": dropped}
    if pick is None:
        out_["runs_done"] = 0
        out_["others"] = sorted(lb for lb in fresh if lb != "dpo")
        return out_
    label = pick["label"]
    mine = {lb: fresh.get(lb, {}) for lb in ("dpo", label)}
    out_["runs_done"] = sum(len(by) for by in mine.values())
    out_["seeds_run"] = sorted({x for by in mine.values() for x in by})
    out_["others"] = sorted(lb for lb in fresh if lb not in mine)
    out_["label"] = label
    out_["rows"] = {lb: config_row(lb, by) for lb, by in mine.items() if by}
    if set(mine["dpo"]) & set(mine[label]):
        out_ |= {"against": "dpo", **paired(mine[label], mine["dpo"])}
    return out_
