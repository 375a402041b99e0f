"""results.json, report.md and the plots of a study directory (from analysis.py's estimates)."""

from __future__ import annotations

import json
import os
from typing import Any

from experiments.study.analysis import load, rho_of, trajectory
from experiments.study.summary import analyse
from experiments.verdicts import _fmt

PNG = {
    "drift": "drift_curves.png",
    "rho": "rho_curve.png",
    "frontier": "reward_vs_kl.png",
    "hessian": "hessian_traces.png",
}


def table1(res: dict[str, Any]) -> str:
    """One row per configuration: win rates, reward and KL (cluster bootstrap), held-out squeezing
    measures (t over seeds), and the head-to-head against the same loss without SAM."""
    sft = res["sft"]
    head = (
        "| method | seeds | win vs SFT % | win vs chosen % | vs plain: win-rate gain pp / head-to-head % "
        f"| mean {res['reward_name']} | KL to ref "
        "| held-out Δ+ final | Δ+ min | Δ− final | top-token mass |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| SFT (start) | – | 50 (by definition) | {_fmt(sft['win_vs_chosen'], pct=True)} | – | "
        f"{_fmt(sft['reward'], digits=3)} | 0 | 0 | 0 | 0 | – |"
    ]
    conf = res.get("confirmation") or {}
    rows = [(label, r, res["paired"].get(label)) for label, r in res["configs"].items()]
    rows += [
        (f"{label} (confirmation, fresh seeds)", r, conf if label == conf["label"] and conf.get("seeds") else None)
        for label, r in conf.get("rows", {}).items()
    ]
    for label, r, p in rows:
        h2h = (
            f"{_fmt(p['win_vs_sft_diff'], pct=True)} / {_fmt(p['win'], pct=True)} vs {p['against']} "
            f"({len(p['seeds'])} seeds)"
            if p
            else "–"
        )
        lines.append(
            f"| {label} | {len(r['seeds'])} | {_fmt(r['win_vs_sft'], pct=True)} | {_fmt(r['win_vs_chosen'], pct=True)} "
            f"| {h2h} | {_fmt(r['reward'], digits=3)} | {_fmt(r['kl'])} | {_fmt(r['chosen_drift_final'])} "
            f"| {_fmt(r['chosen_drift_min'])} | {_fmt(r['rejected_drift_final'])} "
            f"| {_fmt(r['top_token_final'], digits=3)} |"
        )
    return head + "\n".join(lines)


def _plots(out: str, res: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, runs = load(out)
    written = []

    # Fig. 1c analogue: held-out drift along training, mean and min–max band over seeds
    show = [
        lb
        for lb in ("dpo", "dpo+lsam(1e-1)", "dpo(lr×0.5)", "slic", "slic+lsam(1e0)", "cpo", "cpo+lsam(1e-1)")
        if lb in runs
    ]
    if show:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharex=True)
        for i, label in enumerate(show):
            for ax, key, title in (
                (axes[0], "eval_logps/chosen_drift", "held-out chosen drift Δ+ (nats)"),
                (axes[1], "eval_logps/rejected_drift", "held-out rejected drift Δ− (nats)"),
            ):
                curves = [dict(zip(*trajectory(r, key), strict=True)) for r in runs[label].values()]
                steps = sorted(set.intersection(*(set(c) for c in curves)))  # steps every seed logged
                vals = [[c[t] for t in steps] for c in curves]
                n = len(steps)
                mean = [sum(v[j] for v in vals) / len(vals) for j in range(n)]
                ax.plot(steps, mean, color=f"C{i}", label=f"{label} ({len(vals)} seeds)")
                ax.fill_between(
                    steps,
                    [min(v[j] for v in vals) for j in range(n)],
                    [max(v[j] for v in vals) for j in range(n)],
                    color=f"C{i}",
                    alpha=0.15,
                )
                ax.set_title(title)
                ax.set_xlabel("step")
                ax.axhline(0, color="grey", lw=0.5)
        axes[0].legend(fontsize=7)
        fig.suptitle("Held-out drift along training: mean over seeds, band = min–max over seeds (Fig. 1c analogue)")
        fig.tight_layout()
        written.append(_save(fig, out, PNG["drift"]))

    # Table 3 analogue: the ρ curve
    sweep = sorted((rho_of(k), k) for k in res["paired"] if k.startswith("dpo+lsam("))
    if sweep:
        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        xs = [r for r, _ in sweep]
        for ax, key, title, k in (
            (axes[0], "win_vs_sft_diff", "win-rate gain over DPO (pp, vs SFT)", 100),
            (axes[1], "chosen_drift_diff", "held-out Δ+ minus DPO's (nats)", 1),
            (axes[2], "kl_diff", "KL minus DPO's", 1),
        ):
            m, err = _bars([res["paired"][lb][key] for _, lb in sweep], k)
            ax.errorbar(xs, m, yerr=err, marker="o", capsize=3, label="sweep (seeds that picked ρ)")
            conf = res.get("confirmation") or {}
            if conf.get(key):  # the pick re-run on fresh seeds, drawn a little to the right
                m, err = _bars([conf[key]], k)
                x = rho_of(conf["label"]) * 1.25
                ax.errorbar([x], m, yerr=err, marker="s", color="C3", capsize=3, label="fresh seeds")
            ax.axhline(0, color="grey", lw=0.5)
            ax.set_xscale("log")
            ax.set_xlabel("ρ (logits-SAM)")
            ax.set_title(title)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        written.append(_save(fig, out, PNG["rho"]))

    # reward vs KL frontier
    fig, ax = plt.subplots(figsize=(7, 5))
    for i, (label, r) in enumerate(res["configs"].items()):
        x, y = r["kl"], r["reward"]
        ax.errorbar(
            [x["mean"]],
            [y["mean"]],
            xerr=[[x["mean"] - x["low"]], [x["high"] - x["mean"]]],
            yerr=[[y["mean"] - y["low"]], [y["high"] - y["mean"]]],
            marker="o",
            color=f"C{i % 10}",
            capsize=2,
            label=label,
        )
    ax.scatter([0], [res["sft"]["reward"]["mean"]], marker="*", s=120, color="k", label="SFT")
    ax.set_xlabel("KL to the reference (nats per sample)")
    ax.set_ylabel(f"mean {res['reward_name']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(_save(fig, out, PNG["frontier"]))

    # §4.3 analogue: Hessian traces per seed, Hutchinson standard errors
    hs = [(lb, r) for lb, r in res["configs"].items() if "logit_hessian" in r]
    if hs:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, kind in zip(axes, ("parameter_hessian", "logit_hessian"), strict=True):
            names, vals, errs = [], [], []
            for lb, r in hs:
                for s, e in r[kind]["by_seed"].items():
                    names.append(f"{lb}\ns{s}")
                    vals.append(e["trace"])
                    errs.append(e["stderr"])
            ax.bar(
                range(len(vals)),
                vals,
                yerr=errs,
                capsize=3,
                color=[f"C{[h[0] for h in hs].index(n.split(chr(10))[0])}" for n in names],
            )
            ax.set_xticks(range(len(vals)), names, fontsize=6)
            ax.set_title(f"{kind.replace('_', ' ')} trace (Hutchinson ± stderr)")
        fig.tight_layout()
        written.append(_save(fig, out, PNG["hessian"]))
    return written


def _bars(es: list[dict[str, float]], k: float) -> tuple[list[float], list[list[float]]]:
    """Means and asymmetric error bars (no bar where an interval is missing), scaled by ``k``."""
    lo = [k * (e["mean"] - e["low"]) if e["low"] == e["low"] else 0 for e in es]
    hi = [k * (e["high"] - e["mean"]) if e["high"] == e["high"] else 0 for e in es]
    return [k * e["mean"] for e in es], [lo, hi]


def _no_nan(x: Any) -> Any:
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_no_nan(v) for v in x]
    return x


def _save(fig: Any, out: str, name: str) -> str:
    import matplotlib.pyplot as plt

    path = os.path.join(out, name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_study_report(out: str) -> str:
    """Write results.json, report.md and the plots into ``out``; returns the claims as text."""
    res = analyse(out)
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(_no_nan(res), f, indent=1)  # strict JSON: NaN (nothing measured) is written as null
    plots = _plots(out, res)
    planned = len(res["planned_seeds"])
    short = [lb for lb, r in res["configs"].items() if len(r["seeds"]) < planned]
    unstarted = [lb for lb in res["planned"] if lb not in res["configs"]]
    done = sum(len(r["seeds"]) for r in res["configs"].values())
    total = planned * len(set(res["planned"]) | set(res["configs"]))
    conf = res["confirmation"]
    if res["confirm_planned"] or conf["runs_done"]:  # DPO and the sweep's pick on each fresh seed
        n = 2 * len(set(conf["planned_seeds"]) | set(conf.get("seeds_run", [])))
        done, total = done + conf["runs_done"], total + n
        if not conf["runs_done"]:
            unstarted.append("the confirmation of the sweep's ρ on fresh seeds")
        elif conf["runs_done"] < n:
            short.append(f"the confirmation ({conf['runs_done']} of {n} runs)")
    status = (
        f"**Status: {done} of {total} planned runs finished**"
        + (f"; fewer seeds than planned: {', '.join(short)}" if short else "")
        + (f"; not run yet: {', '.join(unstarted)}" if unstarted else "")
        + (f" — `python -m experiments.study.command --out {out}` resumes." if done < total else ".")
    )
    lines = [f"- **{c['verdict']}** — {c['claim']}: {c['evidence']}" for c in res["claims"]]
    text = "\n".join(lines)
    md = [
        "# logitsam study: the paper's claims on the demo's task",
        "",
        status,
        "",
        f"Task: {res['description']}. Training: the demo's {res['pairs']['train']} pairs, one epoch. Held-out: "
        f"{res['prompts']} prompts for win rates, reward and KL ({res['chosen_prompts']} of them with a held-out "
        f"preference pair: win vs chosen and the Δ± squeezing measures on {res['pairs']['heldout']} pairs).",
        "",
        f"Tuning: {res['tuning']}",
        "",
        "Intervals (95%): win rates, reward and KL are means of a seeds × prompts grid with crossed random-effects "
        "intervals (seed, prompt and cell variance from the two-way ANOVA, Satterthwaite t; docs/design.md §8). "
        "Comparisons with the plain run are cell by cell: same prompt, same training seed, same sampling seed "
        "(the win-rate gain is the paired difference of the two runs' wins against SFT; head-to-head judges the "
        "two samples directly, identical samples tie). Δ±, top-token mass and Hessian traces are Student-t "
        "intervals over seeds on fixed held-out pairs: they say whether other seeds would agree on these pairs, "
        "not on other pairs. Verdicts: *reproduced* = the interval excludes no effect on the paper's side; *not "
        "reproduced* = it excludes it on the other side (or, for win rates, lies entirely below the effect of "
        "interest: the paper's smallest Table 1 gain, +1.76 pp, or that gain's share of the plain loss's own gain "
        "over SFT applied to ours, whichever is smaller; for the ρ sweep, every ρ's family-wise interval); "
        "otherwise *inconclusive*; a configuration whose samples are ≥ 95% identical to its plain run's, or whose "
        "held-out Δ+ stays within seed noise of it, is *not testable here (no-op)*; a win-rate gain with "
        "significantly more KL is only inconclusive; each claim gives its minimal detectable effect at 80% power.",
        "",
        "## Claims",
        "",
        text or "(no comparison finished yet)",
        "",
        "## Table 1 analogue (every configuration)",
        "",
        table1(res),
        "",
        "Δ+ / Δ−: held-out chosen / rejected log-prob minus the reference's (nats, summed over the response); "
        "top-token mass: mean probability of the most likely token on held-out chosen responses.",
    ]
    md += ["", "## Plots", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(md) + "\n")
    return text
