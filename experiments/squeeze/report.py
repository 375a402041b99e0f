"""Reports of the squeeze experiment: the pilot's figure and the main comparison's report.md,
results.json and Fig. 1c analogue (training and held-out Δ± along training, bands over seeds)."""

from __future__ import annotations

import json
import os
from typing import Any

from experiments.squeeze.analysis import NAMES, analyse, load
from experiments.squeeze.experiment import load_json
from experiments.squeeze.gate import trajectory
from experiments.squeeze.pilot import GRID, rows
from experiments.squeeze.plan import CONTROL_ARMS, MAIN_ARMS, STAGE2_ARMS, plan, stage2_plan
from experiments.verdicts import _fmt, noop


def _axes(n: int) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    return plt, fig, axes[0]


def pilot_figure(out: str) -> str | None:
    """Per pilot setting: mean Δ+ / Δ− over the probed pairs along training (held-out solid, training dashed)."""
    found = [s for s in GRID if os.path.exists(os.path.join(out, "runs", s.name, "dpo_s0", "record.json"))]
    if not found:
        return None
    plt, fig, axes = _axes(len(found))
    for ax, s in zip(axes, found, strict=True):
        rec = load_json(os.path.join(out, "runs", s.name, "dpo_s0", "record.json"))
        start = load_json(os.path.join(out, "shared", f"{s.name}.json"))
        for part, style in (("heldout", "-"), ("train", "--")):
            for side, color, name in ((0, "tab:green", "Δ+ (chosen)"), (1, "tab:red", "Δ− (rejected)")):
                t = trajectory(rec, start, part, side)
                ax.plot(sorted(t), [t[k] for k in sorted(t)], style, color=color, label=f"{name}, {part}")
        ax.axhline(0, color="gray", lw=0.5)
        ax.set(title=s.name, xlabel="step", ylabel="nats (mean over pairs)")
    axes[0].legend(fontsize=6)
    path = os.path.join(out, "pilot_drift.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def drift_figure(out: str, setting: str, labels: list[str], suffix: str = "") -> str:
    """Fig. 1c analogue: mean ± SD over seeds of the per-run mean Δ± (held-out and training) by arm;
    written to ``drift_<setting><suffix>.png``."""
    start, runs = load(out, setting)
    plt, fig, axes = _axes(2)
    for ax, part in zip(axes, ("heldout", "train"), strict=True):
        for i, lb in enumerate(labels):
            for side, style in ((0, "-"), (1, ":")):
                traj = [trajectory(r, start, part, side) for r in runs[lb].values()]
                steps = sorted(set.intersection(*(set(t) for t in traj)))
                mean = [sum(t[k] for t in traj) / len(traj) for k in steps]
                sd = [
                    (sum((t[k] - m) ** 2 for t in traj) / max(1, len(traj) - 1)) ** 0.5
                    for k, m in zip(steps, mean, strict=True)
                ]
                ax.plot(steps, mean, style, color=f"C{i}", label=f"{lb} {'Δ+' if side == 0 else 'Δ−'}")
                ax.fill_between(
                    steps,
                    [m - s for m, s in zip(mean, sd, strict=True)],
                    [m + s for m, s in zip(mean, sd, strict=True)],
                    color=f"C{i}",
                    alpha=0.15,
                )
        ax.axhline(0, color="gray", lw=0.5)
        ax.set(title=f"{part} pairs", xlabel="step", ylabel="log π − log π_ref (nats, mean over pairs)")
    axes[0].legend(fontsize=6)
    path = os.path.join(out, f"drift_{setting}{suffix}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def arms_table(res: dict[str, Any]) -> list[str]:
    """Markdown rows of the arms of an :func:`analyse` result (main report and demo)."""
    lines = ["| arm | seeds | win vs SFT % | KL | held-out Δ+ | held-out Δ− | top-token Δ | entropy Δ | training Δ+ | "
             "training Δ− | ρ‖g‖/L at step 1 (measured) |", "|---" * 11 + "|"]  # fmt: skip
    for lb, r in res["configs"].items():
        sam = f"{r['sam_first_order']:.3g} ({r['sam_measured']:.3g})" if "sam_first_order" in r else "–"
        lines.append(
            f"| {lb} | {len(r['seeds'])} | {_fmt(r['win_vs_sft'], pct=True)} | {_fmt(r['kl'])} | {_fmt(r['dplus'])} | "
            f"{_fmt(r['dminus'])} | {_fmt(r['top'], digits=4)} | {_fmt(r['entropy'], digits=3)} | "
            f"{_fmt(r['train_dplus'])} | {_fmt(r['train_dminus'])} | {sam} |"
        )
    return lines


def stages(runs: dict[str, dict[int, Any]]) -> list[str]:
    """Markdown: which of the planned runs finished, by stage and arm (a stopped study says how far it got)."""

    def counts(pl: list) -> tuple[dict[str, list[int]], int, int]:
        planned: dict[str, list[int]] = {}
        for arm, seed in pl:
            planned.setdefault(arm.label, []).append(seed)
        done = sum(len(set(runs.get(lb, {})) & set(ss)) for lb, ss in planned.items())
        return planned, done, sum(len(ss) for ss in planned.values())

    def line(arms: tuple, planned: dict[str, list[int]]) -> str:
        parts = []
        for a in arms:
            have = sorted(set(runs.get(a.label, {})) & set(planned[a.label]))
            parts.append(f"{a.label} {len(have)}/{len(planned[a.label])}" + (f" (seeds {have})" if have else ""))
        return "; ".join(parts)

    planned, done, total = counts(plan())
    lines = [f"{done} of the {total} planned runs of the main comparison and controls finished."]
    lines += [f"- main comparison: {line(MAIN_ARMS, planned)}", f"- controls: {line(CONTROL_ARMS, planned)}"]
    planned2, done2, total2 = counts(stage2_plan())
    head = "- second stage, SLiC-HF and CPO ± logits-SAM (Table 6 proportions to DPO's ρ = 1e-2, after the first stage)"
    stopped = " — stopped (issue 30: a drift setting cannot test squeezing; finished runs kept)"
    lines.append(
        f"{head}: {done2} of {total2} runs{stopped}: {line(STAGE2_ARMS, planned2)}" if done2 else f"{head}: not run"
    )
    lines.append("- Hessian traces (§4.3): not measured in this setting (no final models are kept; the short "
                 "on-policy study measures them, `python -m experiments.study.command`)")  # fmt: skip
    return lines


def sweep_table(res: dict[str, Any]) -> list[str]:
    """Markdown: the Table 3 analogue, one row per ρ with KL beside the win rate and the no-op test."""
    lines = ["| ρ | ρ‖g‖/L at step 1 | seeds | win vs SFT % | KL | gain over DPO, pp (95%) | family-wise | "
             "KL − DPO's | identical samples | no-op |", "|---" * 10 + "|"]  # fmt: skip
    for a in sorted((a for a in MAIN_ARMS if a.rho and a.label in res["paired"]), key=lambda a: a.rho):
        r, p, adj = res["configs"][a.label], res["paired"][a.label], res["rho_sweep_adjusted"].get(a.label, {})
        idle = noop(p, res["configs"].get("dpo"))
        scale = f"{r['sam_first_order']:.3g}" if "sam_first_order" in r else "–"
        fw = _fmt(adj.get("win_vs_sft_diff", {}), pct=True, signed=True)
        lines.append(
            f"| {a.rho:g} | {scale} | {len(p['seeds'])} | {_fmt(r['win_vs_sft'], pct=True)} | {_fmt(r['kl'])} | "
            f"{_fmt(p['win_vs_sft_diff'], pct=True, signed=True)} | {fw} ({100 * adj.get('level', 0.95):.2f}%) | "
            f"{_fmt(p['kl_diff'])} | {100 * p['identical_samples']:.0f}% | {'yes' if idle else 'no'} |"
        )
    return lines


def write_main_report(out: str, setting: str, pilot_dir: str | None = None) -> str:
    """report.md + results.json (+ the drift figure) of the main comparison in ``out``; returns the text."""
    pilot_row = None
    if pilot_dir is not None:
        pilot_row = next((r for r in rows(pilot_dir) if r["setting"]["name"] == setting), None)
    res = analyse(out, setting, pilot_row)
    lines = [
        f"# Squeeze regime (a drift setting): main comparison in `{setting}`",
        "",
        "**A drift setting** (issue 30; docs/design.md §10): the held-out responses are the starting model's own "
        "samples, so held-out chosen and rejected log-probs fall together, ≈ −KL(π₀‖π) — any policy that moves "
        "lowers them — while the chosen responses of the pairs trained on rise. Held-out Δ+ here measures how far "
        "a run moved, not the paper's squeezing; the likelihood-displacement setting (`results/displacement`) "
        "is where that is tested.",
        "",
    ]
    if res["gate_shortfall"]:
        lines += [
            f"**The setting did not meet the gate** (plain DPO in the pilot, seed 0, intervals over pairs): "
            f"{res['gate_shortfall']}. Every verdict is labelled.",
            "",
        ]
    dpo = res["configs"].get("dpo")
    if dpo:  # the gate was judged on the pilot's one seed; the main comparison's DPO seeds say it again
        lines += [
            f"Plain DPO on the main comparison's {len(dpo['seeds'])} seeds (t over seeds): held-out Δ+ "
            f"{_fmt(dpo['dplus'])} nats, training Δ+ {_fmt(dpo['train_dplus'])} nats, held-out top-token mass "
            f"{_fmt(dpo['top'], digits=3)}, entropy {_fmt(dpo['entropy'])} nats, win rate against SFT "
            f"{_fmt(dpo['win_vs_sft'], pct=True)}%.",
            "",
        ]
    if pilot_dir is not None and os.path.exists(os.path.join(pilot_dir, "pilot.md")):
        link = os.path.relpath(os.path.join(pilot_dir, "pilot.md"), out)
        lines += [f"The pilot's grid, its numbers and the gate: [{link}]({link}).", ""]
    effects = res.get("effects") or {"dpo": res["effect_text"]}
    if len(effects) > 1:
        lines += ["Effect of interest, per plain loss:", ""] + [f"- {NAMES.get(k, k)}: {t}" for k, t in effects.items()]
        lines += ["", "## Claims", ""]
    else:
        lines += [f"Effect of interest: {next(iter(effects.values()))}.", "", "## Claims", ""]
    lines += [f"- **{c['verdict']}** — {c['claim']}: {c['evidence']}" for c in res["claims"]]
    _, runs = load(out, setting)
    lines += ["", "## What ran", "", *stages(runs)]
    lines += ["", "## Table 1 analogue: every arm (95% intervals; win rates and KL over seeds × prompts)", ""]
    lines += [*arms_table(res)]
    if any(a.rho and a.label in res["paired"] for a in MAIN_ARMS):
        lines += ["", "## Table 3 analogue: the ρ sweep against DPO on shared seeds", "", *sweep_table(res)]
    shown = [lb for lb in runs if lb == "dpo" or lb.startswith("dpo+lsam")]
    if shown:
        lines += ["", f"![drift]({os.path.basename(drift_figure(out, setting, shown))})"]
    controls = [a.label for a in CONTROL_ARMS if a.label in runs]
    if controls and "dpo" in runs:  # the controls beside DPO: does any of them keep Δ+ up?
        path = drift_figure(out, setting, ["dpo", *controls], "_controls")
        lines += ["", "Controls beside DPO (bands: SD over seeds; none with one seed):", "",
                  f"![drift of the controls]({os.path.basename(path)})"]  # fmt: skip
    second = [a.label for a in STAGE2_ARMS if a.label in runs]
    if second:  # the second stage: each loss beside its logits-SAM arm
        path = drift_figure(out, setting, second, "_stage2")
        lines += ["", "Second stage, SLiC-HF and CPO ± logits-SAM (bands: SD over seeds; none with one seed):", "",
                  f"![drift of the second stage]({os.path.basename(path)})"]  # fmt: skip
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write(text)
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1, default=str)
    return text
