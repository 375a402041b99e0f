"""The paper's claims, each answered in one line from the study's estimates (analysis.py)."""

from __future__ import annotations

from typing import Any

from experiments.stats import Estimate
from experiments.study.analysis import rho_of
from experiments.study.confirm import seed_list
from experiments.study.plan import StudySettings
from experiments.verdicts import HESSIAN_REL_SE, _fmt, _seeds, sweep_verdict, verdict, win_verdict


def trace_precision(cfgs: dict[str, Any], labels: tuple[str, ...], kind: str) -> tuple[float, float, int] | None:
    """(smallest, largest standard error / |trace|, probes) over every seed's trace of ``labels``; None
    without traces."""
    est = [t for lb in labels for t in (cfgs.get(lb, {}).get(kind) or {}).get("by_seed", {}).values()]
    rel = [t["stderr"] / abs(t["trace"]) if t["trace"] else float("inf") for t in est]
    return (min(rel), max(rel), max(t.get("probes", 0) for t in est)) if rel else None


def _precision_note(p: tuple[float, float, int] | None) -> str:
    if p is None:
        return ""
    lo, hi, probes = p
    if probes == 0 and hi == 0:
        return "; the traces are exact (closed form, no probes)"
    ok = "within" if hi <= HESSIAN_REL_SE else "above"
    return (f"; the traces' standard errors are {100 * lo:.0f}–{100 * hi:.0f}% of the trace ({probes} probes), "
            f"{ok} the {100 * HESSIAN_REL_SE:.0f}% target"
            + ("" if ok == "within" else ": too imprecise to decide either way"))  # fmt: skip


def claims(res: dict[str, Any]) -> list[dict[str, str]]:
    """[{claim, verdict, evidence}] in the report's order; a claim whose runs are missing says so."""
    out: list[dict[str, str]] = []
    pairs, mm = res["paired"], res["matched_movement"]

    def add(claim: str, v: str, evidence: str) -> None:
        out.append({"claim": claim, "verdict": v, "evidence": evidence})

    missing = "runs missing (no finished seed in common)"
    cfgs = res["configs"]
    dpo = pairs.get("dpo+lsam(1e-1)")
    squeeze = "logits-SAM reduces the squeezing of held-out chosen responses in DPO (paper §3, Fig. 1c)"
    if dpo:
        e = dpo["chosen_drift_diff"]
        base = cfgs["dpo"]["chosen_drift_final"]
        v = verdict(e, 0.0, +1)
        note = ""
        if v == "reproduced" and Estimate(**base).excludes(0.0) != -1:
            v, note = "inconclusive", " — but plain DPO's own squeezing is not established"
        add(
            squeeze,
            v,
            f"held-out Δ+ (DPO+logits-SAM − DPO, same seed) {_fmt(e)} nats, t over {_seeds(e)} on the same "
            f"{res['pairs']['heldout']} held-out pairs; plain DPO's Δ+ {_fmt(base)}; Δ− difference "
            f"{_fmt(dpo['rejected_drift_diff'])}{note}",
        )
    else:
        add(squeeze, "not measured", missing)
    for loss, name in (("dpo", "DPO"), ("slic", "SLiC-HF"), ("cpo", "CPO")):
        labs = [k for k in pairs if k.startswith(f"{loss}+lsam(") and (loss != "dpo" or k.endswith("(1e-1)"))]
        claim = f"logits-SAM raises {name}'s win rate against SFT (Table 1)"
        if not labs:
            add(claim, "not measured", missing)
            continue
        p = pairs[labs[0]]
        add(claim, *win_verdict(p, f"{labs[0]} − {loss}", res, loss))
    sweep = sorted((rho_of(k), k) for k in pairs if k.startswith("dpo+lsam("))
    claim = "some ρ of the sweep raises DPO's win rate against SFT (Table 3)"
    if len(sweep) >= 2:
        add(claim, *sweep_verdict(res, sweep))
    else:
        add(claim, "not measured", "fewer than two values of ρ finished")
    for kind, name, digits in (("parameter_hessian", "parameter", 1), ("logit_hessian", "logit", 3)):
        claim = f"logits-SAM finds flatter solutions (§4.3: lower {name}-Hessian trace)"
        if dpo and f"{kind}_diff" in dpo:
            e = dpo[f"{kind}_diff"]
            v, precision = verdict(e, 0.0, -1), trace_precision(cfgs, ("dpo", "dpo+lsam(1e-1)"), kind)
            if precision and precision[1] > HESSIAN_REL_SE and v != "inconclusive":
                v = "inconclusive"  # a trace known to ±(> 5%) cannot carry a verdict either way
            add(
                claim,
                v,
                f"trace difference (SAM − plain, same seed) {_fmt(e, digits=digits)}: t over {_seeds(e)} and the "
                "probes' own error; each "
                f"trace a Hutchinson estimate on {res['hessian_pairs']} held-out pairs (per-seed values and standard "
                f"errors in results.json){_precision_note(precision)}",
            )
        else:
            add(claim, "not measured", missing if not dpo else "Hessian traces missing from some runs")
    claim = "the squeezing reduction is not just a smaller step (matched-movement control)"
    if mm.get("equal_rejected"):
        e, m = mm["equal_rejected"], mm.get("equal_margin", {})
        kl, br = mm.get("equal_kl", {}), mm.get("equal_kl_bracketed", {})
        v = verdict(e, 0.0, +1)
        others = [verdict(x, 0.0, +1) for x in (m, kl) if x]
        if v == "reproduced" and "not reproduced" in others:
            v = "inconclusive"
        if br:
            inside = br["seeds_bracketed"]
            bracket = f", {inside} of {br['of']} seeds inside the two DPO runs" + (
                ": the rest extrapolated" if inside < br["of"] else ""
            )
        else:
            bracket = ": DPO at half the learning rate not finished"
        add(
            claim,
            v,
            f"Δ+ of DPO+logits-SAM minus DPO's at the same held-out rejected drift {_fmt(e)} "
            f"({mm['equal_rejected_seeds']} of {len(mm['seeds'])} seeds matched); at the same margin {_fmt(m)}; at "
            f"the same KL (line through DPO and DPO at half the learning rate{bracket}) {_fmt(kl)}; reward at the "
            f"same KL {_fmt(mm.get('reward_at_equal_kl', {}), digits=3)} (t over seeds)",
        )
    else:
        add(claim, "not measured", missing)
    _confirmed(res, add)
    return out


def _confirmed(res: dict[str, Any], add: Any) -> None:
    """The sweep's saved pick re-run against DPO on fresh seeds: judged at 95%, no adjustment (the pick was
    made before these runs)."""
    claim = "the sweep's best ρ, re-run on fresh seeds, raises DPO's win rate against SFT (Table 3, confirmed)"
    c = res.get("confirmation") or {}
    planned = c.get("planned_seeds", list(StudySettings.confirm_seeds))
    saved = c.get("pick")
    if not c.get("seeds"):
        if not res.get("confirm_planned", True) and not c.get("runs_done"):
            why = "not planned (the study ran without its confirm group)"
        elif saved is None and c.get("others"):
            why = (
                f"confirmation runs of {', '.join(c['others'])} exist but no saved pick (confirm.json): "
                "`python -m experiments.study.command` with the confirm group picks ρ again from the finished sweep"
            )
        elif saved is None:
            why = f"confirmation runs (seeds {seed_list(planned)}) not run yet: ρ is picked when the sweep is finished"
        else:
            why = (
                f"confirmation of ρ={saved['rho']:g} (the sweep's pick, confirm.json) not finished: {c['runs_done']} "
                f"of {2 * len(planned)} runs on seeds {seed_list(planned)}"
            )
        add(claim, "not measured", why)
        return
    picked_on = seed_list(saved["sweep_seeds"])
    what = f"ρ={saved['rho']:g} on fresh seeds {seed_list(c['seeds'])} (picked on seeds {picked_on}) − dpo"
    v, ev = win_verdict(c, what, res, "dpo")
    notes = ""
    if res.get("rho_best") and res["rho_best"] != c["label"]:
        notes += f"; the sweep on all its current runs would now pick {res['rho_best']} (the saved pick stands)"
    if c.get("others"):
        notes += f"; confirmation runs of {', '.join(c['others'])} are not the saved pick's: left out"
    add(claim, v, f"{ev}; held-out Δ+ difference {_fmt(c['chosen_drift_diff'])} nats (t over seeds){notes}")
