"""The verdict rules both experiments share (study: the short on-policy setting; squeeze: the squeeze
regime): the effect of interest stated before running (the paper's Table 1), the minimal detectable
effect, the no-op rule, the win-rate and ρ-sweep verdicts, and their number formatting."""

from __future__ import annotations

from typing import Any

from experiments.stats import Estimate

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


def noop(p: dict[str, Any], plain_row: dict[str, Any] | None = None) -> str | None:
    """Why a configuration is a no-op against its plain run here (None if it is not): its samples are
    ≥ 95% identical to the plain run's, or its paired held-out Δ+ trajectory (arm − plain, same seed) never
    leaves 0, on any seed, by as much as the seed-to-seed SD of that paired difference (``paired_drift_sd``;
    stats.paired_gap). The yardstick is the *paired* SD: the plain runs' own seed SD (``plain_row``, kept
    for the reports) includes seed effects the pairing removes, so a consistent shift smaller than it is
    still a measured effect, not a no-op. Fewer than 2 seeds: the trajectory rule does not apply."""
    if p.get("identical_samples", 0.0) >= NOOP_IDENTICAL:
        return f"{100 * p['identical_samples']:.0f}% of its samples are identical to the plain run's"
    gap, sd = p.get("chosen_drift_gap"), p.get("paired_drift_sd")
    if gap is not None and sd is not None and gap == gap and sd == sd and (gap < sd or gap == 0.0):
        return (
            f"its held-out Δ+ trajectory stays within {gap:.3g} nats of the same seed's plain run, below the "
            f"paired seed noise (SD over seeds of arm − plain at the end: {sd:.3g})"
        )
    return None


NOT_TESTABLE = "not testable here (no-op)"
HESSIAN_REL_SE = 0.05  # a Hutchinson trace must be known to this standard error relative to it (issue 16)


def _fmt(e: dict[str, float], pct: bool = False, digits: int = 2, signed: bool = False) -> str:
    """ "mean [low, high]" (percent for rates); three significant digits where ``digits`` would show 0; a
    one-seed interval (over prompts) is labelled as such."""
    if not e or e.get("n", 0) == 0 or e["mean"] != e["mean"]:
        return "–"
    k = 100 if pct else 1
    vals = [k * e["mean"], k * e["low"], k * e["high"]]
    if pct:
        f = "{:+.1f}" if signed else "{:.1f}"
    elif 0 < max(abs(v) for v in vals if v == v) < 10**-digits:
        f = "{:+.3g}"
    else:
        f = "{:+." + str(digits) + "f}"
    if vals[1] != vals[1]:
        return f"{f.format(vals[0])} (1 seed)"
    # one seed's interval is over prompts alone: it leaves the seed-to-seed variance out, so it says so
    alone = " (1 seed: over prompts only)" if e.get("n") == 1 else ""
    return f"{f.format(vals[0])} [{f.format(vals[1])}, {f.format(vals[2])}]{alone}"


def verdict(e: dict[str, float], null: float, direction: int, smallest: float | None = None) -> str:
    """reproduced: the interval excludes ``null`` on the claimed side and reaches ``smallest`` (the
    smallest effect the claim is about); not reproduced: it excludes ``null`` on the other side, or lies
    entirely short of ``smallest`` — also when it excludes ``null`` (a real effect, smaller than the one
    claimed: :func:`short_of` says so); otherwise inconclusive."""
    if not e or e.get("n", 0) < 2 or e["low"] != e["low"]:
        return "not measured"  # fewer than 2 seeds: no interval over seeds
    side = Estimate(**e).excludes(null)
    if side == -direction or short_of(e, smallest, direction):
        return "not reproduced"
    if side == direction:
        return "reproduced"
    return "inconclusive"


def short_of(e: dict[str, float], smallest: float | None, direction: int) -> bool:
    """Whether the whole interval lies short of the smallest effect of interest on the claimed side."""
    if smallest is None or not e or e.get("low") != e.get("low"):
        return False
    return e["high"] < smallest if direction > 0 else e["low"] > smallest


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
        narrow = ""
        if mde(g) > effect:  # underpowered: the exclusion rests on the interval's upper end alone
            narrow = (
                f"; narrowly: its upper end {100 * g['high']:+.2f} pp, and the minimal detectable effect is above "
                "the effect of interest"
            )
        why = f" (the interval excludes the effect of interest, {effect_text}{narrow})"
    elif v == "inconclusive":
        why = f" (the interval reaches the effect of interest, {effect_text})"
    elif v == "not measured":
        why = " (fewer than 2 seeds in common)"
    ev = (
        f"win rate against SFT, {what}: {_fmt(g, pct=True, signed=True)} pp{why}; minimal detectable effect at 80% "
        f"power {100 * mde(g):.1f} pp; head-to-head {_fmt(p['win'], pct=True)}% "
        f"({100 * p['ties']:.0f}% ties, {100 * p['identical_samples']:.0f}% identical samples); KL difference "
        f"{_fmt(kl)} nats; {len(p['seeds'])} seed{'' if len(p['seeds']) == 1 else 's'} × prompts, crossed "
        "random-effects intervals"
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
