"""Tables, plots and report.md for the demo study (results.json holds everything measured)."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Any

from logitsam.experiments.study.stats import clip, crossed_interval, head_to_head


def _series(log: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in log if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def summarize(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per method; intervals treat seeds and prompts as crossed random factors (stats.crossed_interval)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for rec in results["runs"].values():
        groups[rec["method"]].append(rec)
    rows = []
    for method, recs in groups.items():
        drifts = [_series(r["log"], "eval_logps/chosen_drift")[1] for r in recs]
        rej = [_series(r["log"], "eval_logps/rejected_drift")[1] for r in recs]
        row = {
            "method": method,
            "seeds": len(recs),
            # rates: the t interval cut to [0, 1] (a rate cannot leave it; with 2 seeds the t quantile is 12.7)
            "win_vs_sft": _rate([r.get("outcomes_vs_sft", []) for r in recs]),
            "win_vs_chosen": _rate([r.get("outcomes_vs_chosen", []) for r in recs]),
            "mean_reward": crossed_interval([r.get("rewards", []) for r in recs]).to_dict(),
            "kl": sum(r.get("kl", float("nan")) for r in recs) / len(recs),
            "chosen_drift_final": sum(d[-1] for d in drifts if d) / max(1, sum(1 for d in drifts if d)),
            "chosen_drift_min": sum(min(d) for d in drifts if d) / max(1, sum(1 for d in drifts if d)),
            "rejected_drift_final": sum(d[-1] for d in rej if d) / max(1, sum(1 for d in rej if d)),
            "train_seconds": sum(r.get("train_seconds", 0.0) for r in recs) / len(recs),
        }
        plain = method.split("+lsam")[0] if "+lsam" in method else None
        if plain in groups:  # head-to-head against the same loss without SAM: same prompt, same seed
            mine = {r["spec"]["seed"]: r for r in recs}
            theirs = {r["spec"]["seed"]: r for r in groups[plain]}
            seeds = sorted(set(mine) & set(theirs))
            grid = head_to_head([mine[x]["rewards"] for x in seeds], [theirs[x]["rewards"] for x in seeds])
            row["head_to_head"] = {"against": plain, **clip(crossed_interval(grid), 0.0, 1.0).to_dict()}
            gain = [
                [a - b for a, b in zip(mine[x]["outcomes_vs_sft"], theirs[x]["outcomes_vs_sft"], strict=True)]
                for x in seeds
            ]
            row["gain_vs_plain"] = {"against": plain, **clip(crossed_interval(gain), -1.0, 1.0).to_dict()}
        rows.append(row)
    return rows


def _rate(grid: list[list[float]]) -> dict[str, float]:
    return clip(crossed_interval(grid), 0.0, 1.0).to_dict()


def _pct(iv: dict) -> str:
    if iv["n"] == 0 or iv["mean"] != iv["mean"]:
        return "–"
    return f"{100 * iv['mean']:.1f} [{100 * iv['low']:.1f}, {100 * iv['high']:.1f}]"


REWARD_NAMES = {"vader": "VADER", "letters": "letters reward"}


def table(rows: list[dict[str, Any]], sft: dict[str, Any], reward: str = "vader") -> str:
    name = REWARD_NAMES.get(reward, reward)
    head = (
        f"| method | seeds | win vs SFT % [95% CI] | win vs chosen % [95% CI] | head-to-head vs plain % | mean {name} "
        "| KL to ref | held-out Δ+ final (min) | held-out Δ− final |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    chosen = _pct(sft["win_vs_chosen"]) if "win_vs_chosen" in sft else "–"
    lines = [f"| SFT (start) | – | 50 (by definition) | {chosen} | – | {sft['mean_reward']['mean']:+.3f} | 0 | 0 | 0 |"]
    for r in rows:
        h2h = r.get("head_to_head")
        h2h_text = f"{_pct(h2h)} vs {h2h['against']}" if h2h else "–"
        lines.append(
            f"| {r['method']} | {r['seeds']} | {_pct(r['win_vs_sft'])} | {_pct(r['win_vs_chosen'])} | {h2h_text} | "
            f"{r['mean_reward']['mean']:+.3f} | {r['kl']:.2f} | {r['chosen_drift_final']:+.2f} "
            f"({r['chosen_drift_min']:+.2f}) | {r['rejected_drift_final']:+.2f} |"
        )
    return head + "\n".join(lines)


def plot(out: str, results: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    methods = [r["method"] for r in rows]
    colors = {m: f"C{i}" for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for rec in results["runs"].values():
        c = colors[rec["method"]]
        first = rec is next(r for r in results["runs"].values() if r["method"] == rec["method"])
        x, y = _series(rec["log"], "eval_logps/chosen_drift")
        axes[0].plot(x, y, "-o", ms=3, color=c, label=rec["method"] if first else None)
        x, y = _series(rec["log"], "eval_logps/rejected_drift")
        axes[1].plot(x, y, "-o", ms=3, color=c, label=rec["method"] if first else None)
    for ax, title in zip(axes, ("chosen", "rejected"), strict=True):
        ax.axhline(0, color="k", lw=0.8)
        ax.set(title=f"held-out {title}: log π(y) − log π_ref(y)", xlabel="step", ylabel="nats (summed)")
        ax.legend(fontsize=7)
    fig.suptitle("Squeezing on held-out pairs (Fig. 1c analogue)")
    fig.tight_layout()
    paths.append(os.path.join(out, "drift.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.scatter([0], [results["sft"]["mean_reward"]["mean"]], color="k", label="SFT")
    for rec in results["runs"].values():
        ax.scatter([rec.get("kl", 0.0)], [rec["mean_reward"]["mean"]], color=colors[rec["method"]])
    for m in methods:
        ax.scatter([], [], color=colors[m], label=m)
    ax.set(
        xlabel="KL(π ‖ π_ref) per sample (nats)",
        ylabel=f"mean {REWARD_NAMES.get(results['settings']['reward'], 'reward')} (held-out prompts)",
        title="Reward vs KL (each point a seed)",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(os.path.join(out, "reward_kl.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def reading(rows: list[dict[str, Any]]) -> list[str]:
    """Plain statements derived from the numbers (no claim beyond what the table shows)."""
    by = {r["method"]: r for r in rows}
    out = []
    base = by.get("dpo")
    if base:
        squeezed = base["chosen_drift_min"] < 0
        out.append(
            f"- Plain DPO {'did' if squeezed else 'did not'} squeeze the held-out chosen responses: their log-prob "
            f"drift reached {base['chosen_drift_min']:+.2f} nats (final {base['chosen_drift_final']:+.2f}) while the "
            f"rejected drift ended at {base['rejected_drift_final']:+.2f}."
        )
        for m, r in by.items():
            gain = r.get("gain_vs_plain")
            if m.startswith("dpo+lsam") and gain:
                lo, hi = gain["low"], gain["high"]
                out.append(
                    f"- {m}: held-out chosen drift {r['chosen_drift_final']:+.2f} "
                    f"(DPO {base['chosen_drift_final']:+.2f}); "
                    f"its win rate against SFT minus DPO's, prompt by prompt and seed by seed: "
                    f"{100 * gain['mean']:+.1f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}] — "
                    + (
                        "the interval contains 0: not resolved at this sample size."
                        if lo <= 0 <= hi
                        else "the interval excludes 0."
                    )
                    + " ρ was tuned on seed 0, one of the two seeds here: `logitsam study` evaluates on fresh seeds."
                )
    return out


def write_report(out: str, results: dict[str, Any]) -> str:
    """Write results.json, plots and report.md into ``out``; return the markdown table."""
    rows = summarize(results)
    results["summary"] = rows
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    plots = plot(out, results, rows)
    s = results["settings"]
    tbl = table(rows, results["sft"], s["reward"])
    quick = s["model"] == "tiny-random"
    lines = [
        "# logitsam demo: squeezing and logits-SAM"
        + (" — pipeline check on a tiny random model" if quick else " on a real model, offline"),
        "",
        f"Runs on {results.get('description', s['model'])}.",
        "",
        f"Model `{s['model']}`; gold reward `{s['reward']}`; {results['pairs']['train']} training pairs, "
        f"{results['pairs']['heldout']} held-out pairs, {len(results['eval_prompts'])} held-out prompts; "
        f"β={s['beta']}, lr={s['learning_rate']}, batch {s['batch_size']}, {s['epochs']} epoch(s), "
        f"{s['new_tokens']} new tokens; wall time {results['wall_seconds'] / 60:.1f} min.",
        "",
        "Win rates: each model's sample for a held-out prompt against the SFT model's sample (same seed) and "
        "against the held-out pair's chosen response (the SFT row: the SFT model's own rate against chosen), judged "
        "by the gold reward (ties 1/2); head-to-head: each SAM run against the run of the same loss without SAM on "
        "the same prompt with the same seed. Intervals are 95% t intervals treating seeds and prompts as crossed "
        "random factors (docs/design.md §8; two seeds are few: `logitsam study` runs three, and more prompts), "
        "cut to the range a rate can take ([0, 100]; a gain in [−100, 100]). "
        "Δ± = log π(y±) − log π_ref(y±) on held-out pairs "
        "(negative Δ+ = the chosen response is being squeezed). Every run starts from the same model and evaluates "
        "the same held-out pairs, so step 0 is evaluated once per loss setup and shared.",
        "",
        tbl,
        "",
        "## Reading",
        *reading(rows),
        "",
        *[f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots],
        "",
    ]
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return tbl
