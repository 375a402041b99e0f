"""``make demo``: a fast slice of the squeeze regime's main comparison, for a newcomer to see squeezing.

The same pipeline as ``python -m logitsam.experiments.squeeze.main`` (experiment.py), with a smaller
preset: the first 48 training pairs and the first 48 held-out pairs of the main comparison's
``onpolicy-3ep`` setting (shipped in ``data/demo_*.jsonl``, so nothing is sampled to make pairs),
3 epochs (18 steps), one seed, plain DPO and DPO + logits-SAM at ρ = 1e-3 (the main comparison's
first ρ; ρ‖g‖/L ≈ 0.008 here, and no Pythia measurement maps it to the paper's ρ),
held-out and training Δ± probed 4 times along training (the Fig. 1c analogue; the first three
probes on half the held-out pairs, to fit the time), win rate against the starting model and KL on
96 held-out prompts. One seed and 96 prompts cannot decide anything: the report points to the main
comparison's intervals (results/squeeze/main/report.md). Sizes were cut from 64 pairs / 6 probes /
128 prompts (11 min 42 s) to meet the 8-minute target on 2 idle cores.

``quick``: the same pipeline on the tiny random model with a letters-fraction reward (tests, seconds):
a check that everything runs, its numbers mean nothing.
"""

from __future__ import annotations

import os
import shutil
from importlib import resources
from typing import Any

from logitsam.experiments.squeeze.analysis import analyse
from logitsam.experiments.squeeze.experiment import Arm, Experiment, Setting, Shared
from logitsam.experiments.squeeze.plan import MAIN_ARMS
from logitsam.experiments.squeeze.report import arms_table, drift_figure

SETTING = Setting("demo-onpolicy-3ep", pairs="onpolicy", epochs=3, n_train=48)
QUICK_SETTING = Setting("demo-quick", pairs="onpolicy", epochs=2, n_train=16, new_tokens=8, batch_size=4, lr=1e-3)
ARMS: tuple[Arm, ...] = (MAIN_ARMS[0], MAIN_ARMS[1])  # dpo, dpo+lsam(1e-3)
SEED = 1
PROBES = (1 / 4, 2 / 4, 3 / 4, 1.0)
MAIN_REPORT = "results/squeeze/main/report.md"


def demo_shared(quick: bool = False, device: str = "cpu") -> Shared:
    """Measurement sizes of the demo (``quick``: of the tiny pipeline check)."""
    if quick:
        return Shared(
            model="tiny-random", reward="letters", n_heldout_pairs=8, n_train_probe=4, n_win_prompts=8,
            probe_fractions=PROBES, device=device,
        )  # fmt: skip
    return Shared(
        n_heldout_pairs=48, n_train_probe=12, n_win_prompts=96, probe_fractions=PROBES, probe_mid_pairs=24,
        device=device,
    )


def shipped(name: str) -> str:
    """Path of a shipped pairs file (``demo_train.jsonl`` / ``demo_heldout.jsonl``)."""
    return str(resources.files("logitsam.experiments.squeeze").joinpath("data", name))


class ShippedPairs(Experiment):
    """An experiment whose pairs are the shipped slice of the main comparison's (copied into ``out/data``)."""

    def files(self, s: Setting) -> tuple[str, str]:
        d = os.path.join(self.out, "data", s.name)
        os.makedirs(d, exist_ok=True)
        paths = []
        for name, n in (("demo_train.jsonl", s.n_train), ("demo_heldout.jsonl", self.sh.n_heldout_pairs)):
            dst = os.path.join(d, name.removeprefix("demo_"))
            if not os.path.exists(dst):
                with open(shipped(name), encoding="utf-8") as f:
                    lines = f.readlines()[:n]
                with open(dst + ".tmp", "w", encoding="utf-8") as f:
                    f.writelines(lines)
                os.replace(dst + ".tmp", dst)
            paths.append(dst)
        return paths[0], paths[1]


def write_demo_report(out: str, s: Setting, sh: Shared) -> str:
    """report.md (arms table, Fig. 1c analogue) of a demo directory; returns its path."""
    res, quick = analyse(out, s.name), sh.model == "tiny-random"
    lines = ["# logitsam demo: does plain DPO squeeze, and what does logits-SAM do to it?", ""]
    if quick:
        lines += ["**Pipeline check on a tiny random model with a letters reward: the numbers mean nothing.**", ""]
    lines += [
        f"A slice of the squeeze regime's main comparison (`{s.name}`: the first {s.n_train} of its on-policy pairs "
        f"(SmolLM2-135M-Instruct's samples judged by VADER), {s.epochs:g} epochs, lr {s.lr:g}, β {s.beta:g}, seed "
        f"{SEED}). Δ+ / Δ− = change of log π(chosen) / log π(rejected) from the start, summed over the response "
        f"(nats), mean over {sh.n_heldout_pairs} held-out pairs and {sh.n_train_probe} training pairs: *squeezing* "
        "is Δ+ < 0 on held-out pairs (the paper's Fig. 1c). Win rate: against the starting model's samples of the "
        f"same {sh.n_win_prompts} held-out prompts ({sh.reward} judge, ties ½), KL to the starting model on them.",
        "",
        *arms_table(res),
        "",
        f"![drift]({os.path.basename(drift_figure(out, s.name, list(res['configs'])))})",
        "",
        f"One seed and {sh.n_win_prompts} prompts decide nothing: the intervals over seeds 1–5 and 1,080 held-out "
        f"prompts, and the verdicts, are in the main comparison's report (`{MAIN_REPORT}` in the repository).",
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
    exp = ShippedPairs(out, sh)
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
