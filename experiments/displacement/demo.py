"""``make demo`` (``python -m experiments.displacement.demo``): a fast slice of the displacement setting,
for a newcomer to see the chosen response fall.

The same pipeline as the displacement main comparison (``python -m experiments.displacement.main``;
docs/design.md §10), with a smaller preset: the first 48 training swap pairs of the pilot's pick
(``swap-128x3-lr1e-4``: an on-policy sample of SmolLM2-135M-Instruct and the same sample with one
sentiment word swapped for its opposite, VADER preferring one), shipped with two control texts per pair
in ``data/demo_swap_*.jsonl`` so nothing is sampled to make pairs; lr 1e-4, 2 epochs (12 steps); one
seed; three arms: plain DPO, DPO + logits-SAM ρ = 1e-1 (the main comparison's headline arm) and DPOP
(λ 50, the published fix for this failure: the positive control). Along training (2 probes) the demo
measures, on 16 of the trained pairs, Δ+ / Δ− (the chosen / rejected log-prob's change from the start)
beside the drift of control text (the starting model's own samples of the same prompts, in no pair);
at the end, the win rate against the starting model and the KL on 64 held-out prompts. In the pilot,
plain DPO's trained-chosen Δ+ was −11 nats after 16 steps at this learning rate.

One seed, 16 pairs and 64 prompts decide nothing: the report points to the main comparison
(results/displacement/main/report.md).

``quick``: the same pipeline on the tiny random model with a letters-fraction reward (tests, seconds):
a check that everything runs, its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from importlib import resources
from typing import Any

from experiments.displacement.experiment import DisplacementExperiment
from experiments.displacement.gate import measures
from experiments.displacement.plan import DPO, DPOP, lsam
from experiments.squeeze.analysis import load
from experiments.squeeze.experiment import Arm, Setting, Shared
from experiments.squeeze.pilot import _e
from experiments.squeeze.plan import sam_scale
from experiments.squeeze.report import drift_figure
from logitsam.cli import guarded
from logitsam.cli.checks import out_dir
from logitsam.models import check_device

SETTING = Setting("demo-swap", pairs="swap", n_train=48, epochs=2, lr=1e-4)
QUICK_SETTING = Setting("demo-swap-quick", pairs="swap", n_train=16, epochs=2, new_tokens=8, batch_size=4, lr=1e-3)
ARMS: tuple[Arm, ...] = (DPO, lsam(1e-1), DPOP)
SEED = 1
PROBES = (1 / 2, 1.0)
MAIN_REPORT = "results/displacement/main/report.md"


def demo_shared(quick: bool = False, device: str = "cpu") -> Shared:
    """Measurement sizes of the demo (``quick``: of the tiny pipeline check)."""
    if quick:
        return Shared(
            model="tiny-random", reward="letters", n_heldout_pairs=4, n_train_probe=4, n_win_prompts=8,
            probe_fractions=PROBES, device=device,
        )  # fmt: skip
    return Shared(n_heldout_pairs=16, n_train_probe=16, n_win_prompts=64, probe_fractions=PROBES, device=device)


def shipped(name: str) -> str:
    """Path of a shipped swap-pairs file (``demo_swap_train.jsonl`` / ``demo_swap_heldout.jsonl``)."""
    return str(resources.files("experiments.displacement").joinpath("data", name))


def _read(name: str, n: int) -> list[dict[str, Any]]:
    with open(shipped(name), encoding="utf-8") as f:
        return [json.loads(line) for line in f][:n]


class ShippedSwap(DisplacementExperiment):
    """A displacement experiment whose swap pairs (with their edits and control texts) ship with the package."""

    def swap(self, s: Setting) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return _read("demo_swap_train.jsonl", s.n_train), _read("demo_swap_heldout.jsonl", self.sh.n_heldout_pairs)


def arms_table(out: str, s: Setting) -> tuple[str, list[str]]:
    """(markdown table, arm labels): one row per finished arm, 95% t intervals over the probed pairs (win
    rate: over prompts) — one seed, so no interval covers seed-to-seed variation."""
    start, runs = load(out, s.name)
    cols = ("arm", "train Δ+", "pairs with Δ+ < 0", "train Δ−", "control drift", "Δ+ − control",
            "win vs SFT %", "KL", "ρ‖g‖/L", "min")  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for label, seeds in runs.items():
        rec = seeds[SEED]
        m, scale = measures(rec, start), sam_scale(rec)
        strength = f"{scale['first_order']:.3g}" if scale else "–"
        lines.append(
            f"| {label} | {_e(m['train_dplus'])} | {100 * m['train_share_falling']:.0f}% | {_e(m['train_dminus'])} | "
            f"{_e(m['control_drift'])} | {_e(m['dplus_minus_control'])} | {_e(m['win_vs_sft'], pct=True)} | "
            f"{m['kl']:.2f} | {strength} | {rec['seconds'] / 60:.1f} |"
        )
    return "\n".join(lines) + "\n", list(runs)


def write_demo_report(out: str, s: Setting, sh: Shared) -> str:
    """report.md (arms table, drift figure) of a demo directory; returns its path."""
    (table, labels), quick = arms_table(out, s), sh.model == "tiny-random"
    lines = ["# logitsam demo: does plain DPO lower the chosen response it trains on, and what do the fixes do?", ""]
    if quick:
        lines += ["**Pipeline check on a tiny random model with a letters reward: the numbers mean nothing.**", ""]
    lines += [
        f"A slice of the displacement setting (`{s.name}`: the first {s.n_train} swap pairs of the pilot's pick — "
        "a SmolLM2-135M-Instruct sample and the same sample with one sentiment word swapped, VADER preferring one "
        f"— {s.epochs:g} epochs, lr {s.lr:g}, β {s.beta:g}, seed {SEED}). Δ+ / Δ− = change of log π(chosen) / "
        f"log π(rejected) from the start, summed over the response (nats), mean over {sh.n_train_probe} of the "
        "trained pairs: *displacement* is Δ+ < 0 on the pairs trained on. Control drift: the same change for "
        "the starting model's own samples of the same prompts (in no pair), so Δ+ − control separates "
        "displacement from the policy's general drift. Win rate against the starting model's samples of "
        f"{sh.n_win_prompts} held-out prompts ({sh.reward} judge, ties ½), KL to the starting model on them.",
        "",
        table,
        f"![drift]({os.path.basename(drift_figure(out, s.name, labels))})",
        "",
        f"One seed, {sh.n_train_probe} probed pairs and {sh.n_win_prompts} prompts decide nothing: the main "
        f"comparison over seeds, at matched steps and at matched KL, is in `{MAIN_REPORT}` in the repository.",
    ]
    path = os.path.join(out, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def run_demo(out: str, quick: bool = False, device: str = "cpu", log: Any = print) -> str:
    """Train and evaluate the demo's arms into ``out`` (finished runs are kept); returns report.md's path."""
    s = QUICK_SETTING if quick else SETTING
    log(f"demo{' (quick: tiny random model, letters reward)' if quick else ''}: {s.name}, arms "
        f"{', '.join(a.label for a in ARMS)}, seed {SEED}")  # fmt: skip
    sh = demo_shared(quick, device)
    exp = ShippedSwap(out, sh)
    stale = [os.path.isdir(os.path.join(out, "runs")) and not os.path.isdir(os.path.join(out, "runs", s.name))]
    stale += exp.differences(s) + [d for arm in ARMS for d in exp.differences(s, arm)]
    if any(stale):  # an older demo's layout or sizes: nothing of it is reused (the demo's output is disposable)
        log(f"{out}: made by an older demo with other settings; starting again")
        for sub in ("runs", "shared", "data"):
            shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
    for arm in ARMS:
        rec = exp.run(s, arm, SEED)
        log(f"{arm.label}: {rec['seconds'] / 60:.1f} min")
    return write_demo_report(out, s, sh)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m experiments.displacement.demo",
        description="A fast slice of the displacement setting: the first 48 swap pairs (a SmolLM2-135M-Instruct "
        "sample and the same sample with one sentiment word swapped, VADER preferring one; shipped in "
        "experiments/displacement/data), lr 1e-4, 2 epochs, plain DPO, DPO + logits-SAM (rho 1e-1) and DPOP "
        "(lambda 50); the trained pairs' chosen/rejected log-prob change beside control text's drift along "
        "training, win rate against the starting model and KL on 64 held-out prompts. --quick runs the same "
        "pipeline on a tiny random model with a letters-fraction reward: a check that the pipeline works, not a "
        "result.",
    )
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="tiny random model, letters-fraction reward (not VADER), 16 pairs: a pipeline check in about a minute",
    )
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to train (default: cpu)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def command() -> int:
        check_device(args.device)
        out_dir(args.out, "--out")
        print(f"report: {run_demo(args.out, quick=args.quick, device=args.device)} (the drift figure beside it)")
        return 0

    return guarded(command, "demo")


if __name__ == "__main__":
    raise SystemExit(main())
