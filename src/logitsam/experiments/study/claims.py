"""The paper's claims, each answered in one line from the study's estimates (analysis.py)."""

from __future__ import annotations

from typing import Any

from logitsam.experiments.study.analysis import _fmt, rho_of, verdict
from logitsam.experiments.study.confirm import seed_list
from logitsam.experiments.study.plan import StudySettings
from logitsam.experiments.study.stats import Estimate

# The paper's Table 1 (Pythia-2.8B, GPT-5-mini judge): win rate % against SFT, plain and + logits-SAM.
PAPER_TABLE1 = {
    "dpo": {"HH": (70.52, 72.28), "TL;DR": (84.21, 89.58)},
    "slic": {"HH": (65.27, 71.87), "TL;DR": (91.88, 94.40)},
    "cpo": {"HH": (66.60, 70.24), "TL;DR": (90.99, 93.29)},
}
# Effect of interest, stated before the runs: the paper's smallest gain against SFT over the plain loss,
# in points (DPO on HH: 70.52 -> 72.28 = +1.76 pp) and as a share of the plain loss's own gain over SFT
# (1.76 / 20.52 = 8.6% for DPO). Win-rate points do not transfer across judges and tasks, so a verdict
# uses the smaller of the absolute gain and that share of *our* plain loss's gain over SFT.
SMALLEST_GAIN = min(b - a for t in PAPER_TABLE1.values() for a, b in t.values()) / 100  # +1.76 pp
NOOP_IDENTICAL = 0.95  # samples identical to the plain run's at or above this share: a no-op here
Z80 = 0.841621  # one-sided z for 80% power


def paper_gains(loss: str) -> tuple[float, float]:
    """(smallest absolute gain, smallest relative gain) of logits-SAM in the paper's Table 1 for ``loss``."""
    rows = PAPER_TABLE1.get(loss, PAPER_TABLE1["dpo"]).values()
    return min(b - a for a, b in rows) / 100, min((b - a) / (a - 50.0) for a, b in rows)


def effect_of_interest(loss: str, own_gain: float | None) -> tuple[float, str]:
    """(effect in win-rate units, how it was derived): the smaller of the paper's smallest absolute gain
    and its smallest relative gain times our plain loss's own gain over SFT (when that is measured > 0)."""
    absolute, share = paper_gains(loss)
    text = f"+{100 * absolute:.2f} pp (the paper's smallest {loss} gain)"
    if own_gain is not None and own_gain == own_gain and own_gain > 0 and share * own_gain < absolute:
        return share * own_gain, (
            f"+{100 * share * own_gain:.2f} pp = {100 * share:.1f}% (the paper's smallest gain relative to the plain "
            f"loss's own gain over SFT) of {loss}'s gain here, +{100 * own_gain:.1f} pp; absolute: {text}"
        )
    return absolute, text


def mde(e: dict[str, float]) -> float:
    """Minimal detectable effect at 80% power (two-sided 5%) of an interval: (z₀.₉₇₅ + z₀.₈)·SE, SE taken
    as the half-width / 1.96 (a normal approximation; with few seeds the t quantile makes it larger)."""
    if not e or e.get("low") != e.get("low"):
        return float("nan")
    return (e["high"] - e["low"]) / 2 / 1.959964 * (1.959964 + Z80)


def noop(p: dict[str, Any], plain_row: dict[str, Any] | None) -> str | None:
    """Why a configuration is a no-op against its plain run here (None if it is not): its samples are
    ≥ 95% identical to the plain run's, or its held-out Δ+ trajectory never moves from the plain run's
    by as much as the seed-to-seed SD of the plain run's final Δ+."""
    if p.get("identical_samples", 0.0) >= NOOP_IDENTICAL:
        return f"{100 * p['identical_samples']:.0f}% of its samples are identical to the plain run's"
    gap, sd = p.get("chosen_drift_gap"), (plain_row or {}).get("chosen_drift_sd")
    if gap is not None and sd is not None and gap == gap and sd == sd and gap < sd:
        return (
            f"its held-out Δ+ trajectory stays within {gap:.3g} nats of the plain run's, below seed noise "
            f"(seed SD of the plain run's final Δ+ {sd:.3g})"
        )
    return None


NOT_TESTABLE = "not testable here (no-op)"
HESSIAN_REL_SE = 0.05  # a Hutchinson trace must be known to this standard error relative to it (issue 16)


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
                "`logitsam study` with the confirm group picks ρ again from the finished sweep"
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


def _seeds(e: dict[str, Any]) -> str:
    return f"{e['n']} seed" + ("" if e["n"] == 1 else "s")


def effect_for(res: dict[str, Any], loss: str) -> tuple[float, str]:
    row = res.get("configs", {}).get(loss, {}).get("win_vs_sft")
    return effect_of_interest(loss, row["mean"] - 0.5 if row else None)


def win_verdict(p: dict[str, Any], what: str, res: dict[str, Any], loss: str) -> tuple[str, str]:
    """Verdict and evidence for a win-rate claim: the paired gain in win rate against SFT (same prompt,
    same seed) must exclude 0 upward; "not reproduced" needs the interval to exclude the effect of interest
    (``effect_of_interest``); a gain that came with significantly more KL is only inconclusive (a win
    bought with KL is not a win); a no-op configuration (``noop``) is not testable here."""
    g = p["win_vs_sft_diff"]
    effect, effect_text = effect_for(res, loss)
    v = verdict(g, 0.0, +1, effect)
    kl = p["kl_diff"]
    if v == "reproduced" and Estimate(**kl).excludes(0.0) == 1:
        v = "inconclusive (the gain came with more KL)"
    why = ""
    idle = noop(p, res.get("configs", {}).get(p.get("against", loss)))
    if idle and v != "not measured":
        v, why = NOT_TESTABLE, f" ({idle})"
    elif v == "not reproduced" and g["low"] <= 0:
        why = f" (the interval excludes the effect of interest, {effect_text})"
    elif v == "inconclusive":
        why = f" (the interval reaches the effect of interest, {effect_text})"
    elif v == "not measured":
        why = " (fewer than 2 seeds in common)"
    ev = (
        f"win rate against SFT, {what}: {_fmt(g, pct=True, signed=True)} pp{why}; minimal detectable effect at 80% "
        f"power {100 * mde(g):.1f} pp; head-to-head {_fmt(p['win'], pct=True)}% "
        f"({100 * p['ties']:.0f}% ties, {100 * p['identical_samples']:.0f}% identical samples); KL difference "
        f"{_fmt(kl)} nats; {len(p['seeds'])} seeds × prompts, crossed random-effects intervals"
    )
    return v, ev


def sweep_verdict(res: dict[str, Any], sweep: list[tuple[float, str]]) -> tuple[str, str]:
    """ "Some ρ helps" is a claim about every ρ: reproduced when some testable ρ's gain excludes 0 upward at
    the family-wise level (Bonferroni over the sweep, no KL bought); not reproduced only when *every*
    testable ρ's family-wise interval excludes the effect of interest; ρ values that are no-ops here are
    not testable and listed; all of them no-ops: not testable."""
    pairs, adj = res["paired"], res["rho_sweep_adjusted"]
    effect, effect_text = effect_for(res, "dpo")
    parts = [f"ρ={r:g}: {_fmt(pairs[k]['win_vs_sft_diff'], pct=True, signed=True)} pp" for r, k in sweep]
    idle = {k: noop(pairs[k], res.get("configs", {}).get("dpo")) for _, k in sweep}
    tested = [(r, k) for r, k in sweep if not idle[k]]
    level = 100 * adj[sweep[0][1]]["level"]
    family = "; ".join(
        f"ρ={r:g}: {_fmt(adj[k]['win_vs_sft_diff'], pct=True, signed=True)} pp" + (" (no-op)" if idle[k] else "")
        for r, k in sweep
    )
    ev = f"win-rate gain over DPO by ρ (95%): {'; '.join(parts)}. Family-wise ({level:.2f}% each): {family}"
    if not tested:
        return NOT_TESTABLE, ev + f". Every ρ is a no-op here ({'; '.join(f'{k}: {w}' for k, w in idle.items())})"
    ups = [
        k
        for _, k in tested
        if Estimate(**adj[k]["win_vs_sft_diff"]).excludes(0.0) == 1 and Estimate(**adj[k]["kl_diff"]).excludes(0.0) != 1
    ]
    short = [k for _, k in tested if verdict(adj[k]["win_vs_sft_diff"], 0.0, +1, effect) == "not reproduced"]
    if ups:
        v = "reproduced"
        ev += f". Excluding 0 upward: {', '.join(ups)}"
    elif len(short) == len(tested):
        v = "not reproduced"
        ev += f". Every tested ρ's interval excludes the effect of interest, {effect_text}"
    else:
        v = "inconclusive"
        reach = [k for _, k in tested if k not in short]
        ev += f". Reaching the effect of interest ({effect_text}): {', '.join(reach)}"
    best = max(tested, key=lambda t: (pairs[t[1]]["win_vs_sft_diff"]["mean"], -t[0]))[1]
    ev += f"; minimal detectable effect at 80% power of the best ({best}): "
    ev += f"{100 * mde(adj[best]['win_vs_sft_diff']):.1f} pp"
    if len(tested) < len(sweep):
        ev += f"; not testable (no-op): {', '.join(k for k, w in idle.items() if w)}"
    return v, ev
