"""A synthetic `python -m experiments.study.command` directory whose answers are derived by hand (no model is trained): the
records of DPO, DPO + logits-SAM and the half-learning-rate control with linear trajectories, for the
analysis and report tests (test_study_analysis.py, test_study_report.py)."""

import json

from experiments.records import write_record
from stats_reference import NAN

# ---------------------------------------------------------------------------------------------------
# analyse() on a synthetic study directory
# ---------------------------------------------------------------------------------------------------

KEY = "synthetic-key"
SEEDS = (2, 3, 4)
STEPS = (0, 10, 20, 30, 40)
BASE_REWARD = [0.1, 0.3, 0.5, 0.2, 0.4, 0.6]  # mean 0.35
KL_SHAPE = [-0.1, 0.1, 0.0, 0.2, -0.2, 0.0]  # mean 0

# DPO: Δ− = −a·t, Δ+ = −a·t/2 (t = step/10); final Δ+ = −2a, Δ− = −4a, margin Δ+ − Δ− = a·t/2
A = {2: 1.0, 3: 1.2, 4: 0.8}
# DPO + logits-SAM: final Δ+ 0.9 / 1.0 / 1.1 above DPO's; final Δ− chosen inside DPO's range
SAM_C = {2: -1.1, 3: -1.4, 4: -0.5}
SAM_R = {2: -2.5, 3: -3.0, 4: -1.4}
# DPO at half the learning rate (seeds 2 and 3 only: unfinished)
SMALL_C = {2: -1.0, 3: -1.3}
SMALL_R = {2: -2.0, 3: -2.5}
KL = {"dpo": {2: 2.0, 3: 2.2, 4: 1.8}, "dpo+lsam(1e-1)": {2: 1.5, 3: 2.5, 4: 1.4}, "dpo(lr×0.5)": {2: 1.0, 3: 1.2}}
REWARD_OFFSET = {2: 0.0, 3: 0.1, 4: -0.1}
REWARD_SHIFT = {"dpo": 0.0, "dpo+lsam(1e-1)": 0.05, "dpo(lr×0.5)": -0.1}
HESSIAN = {
    "dpo": {"parameter_hessian": {2: 10.0, 3: 12.0, 4: 11.0}, "logit_hessian": {2: 3.0, 3: 3.2, 4: 2.8}},
    "dpo+lsam(1e-1)": {"parameter_hessian": {2: 8.0, 3: 9.0, 4: 9.5}, "logit_hessian": {2: 2.0, 3: 2.1, 4: 1.9}},
}
VS_SFT = {
    "dpo": [1.0, 0.0, 1.0, 0.5, NAN, 1.0],
    "dpo+lsam(1e-1)": [1.0, 1.0, 1.0, 0.5, 1.0, NAN],
    "dpo(lr×0.5)": [0.0, 0.0, 1.0, 0.5, 1.0, 1.0],
}
VS_CHOSEN = {"dpo": [1.0, 0.0, 0.0, 1.0], "dpo+lsam(1e-1)": [1.0, 1.0, 0.0, 1.0], "dpo(lr×0.5)": [0.0, 0.0, 0.5, 1.0]}


def trajectory_of(label, seed):
    """(Δ+, Δ−, top-token mass) at STEPS."""
    t = [s / 10 for s in STEPS]
    if label == "dpo":
        a = A[seed]
        return [-0.5 * a * x for x in t], [-a * x for x in t], [0.3 + 0.01 * x for x in t]
    if label.startswith("dpo+lsam("):
        c = [SAM_C[seed] * x / 4 for x in t]
        c[2] -= 1.0  # a dip half-way: the minimum is not the final value
        return c, [SAM_R[seed] * x / 4 for x in t], [0.3 + 0.005 * x for x in t]
    return [SMALL_C[seed] * x / 4 for x in t], [SMALL_R[seed] * x / 4 for x in t], [0.3 + 0.002 * x for x in t]


def study_record(label, seed, key=KEY, reward_shift=None, **extra):
    c, r, top = trajectory_of(label, seed)
    log = []
    for i, step in enumerate(STEPS):
        log.append(
            {
                "step": step,
                "eval_loss": 0.69 - 0.01 * i,
                "eval_logps/chosen_drift": c[i],
                "eval_logps/rejected_drift": r[i],
                "eval_probs/top_token": top[i],
            }
        )
        if step:  # training records between evaluations carry no held-out metrics
            log.append({"step": step, "loss": 0.6, "learning_rate": 1e-5})
    shift = REWARD_SHIFT.get(label, 0.05) if reward_shift is None else reward_shift
    rec = {
        "key": key,
        "spec": {
            "name": f"{label}/s{seed}",
            "loss": "dpo",
            "rho": 0.1 if "lsam" in label else 0.0,
            "mode": "logits",
            "seed": seed,
            "params": {},
            "lr_scale": 0.5 if "×0.5" in label else 1.0,
        },
        "method": label,
        "config": {"label": label, "hessian": label in HESSIAN},
        "samples": [f"{label} sample {p}" for p in range(6)],
        "rewards": [b + REWARD_OFFSET[seed] + shift for b in BASE_REWARD],
        "outcomes_vs_sft": VS_SFT.get(label, VS_SFT["dpo+lsam(1e-1)"]),
        "outcomes_vs_chosen": VS_CHOSEN.get(label, VS_CHOSEN["dpo+lsam(1e-1)"]),
        "kl_values": [KL.get(label, KL["dpo+lsam(1e-1)"])[seed] + k for k in KL_SHAPE],
        "log": log,
        "final_metrics": {"eval_logps/chosen_drift": c[-1]},
        "seconds": 1.0,
    }
    if label in HESSIAN:
        rec["hessian"] = {
            kind: {"trace": HESSIAN[label][kind][seed], "stderr": 0.1, "probes": 8}
            for kind in ("parameter_hessian", "logit_hessian")
        } | {"pairs": 4}
    return rec | extra


def write_json(path, obj):
    """JSON to ``path``; a run record is written as the study writes it (with its checksum)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name == "record.json":
        write_record(str(path), {k: v for k, v in obj.items() if k != "checksum"})
    else:
        path.write_text(json.dumps(obj), encoding="utf-8")


def shared_json(seeds=SEEDS):
    prompts = [f"prompt {p}" for p in range(6)]
    return {
        "key": KEY,
        "settings": {"seeds": list(seeds), "model": "synthetic", "hessian_pairs": 4},
        "description": "a synthetic study",
        "tuning": "none",
        "pairs": {"train": 10, "heldout": 4},
        "prompts": prompts,
        "chosen_prompts": prompts[:4],
        "sft_samples": [f"sft {p}" for p in range(6)],
        "sft_rewards": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
        "sft_vs_chosen": [1.0, 0.0, 0.5, NAN],
    }


def build_study(root, runs=None, seeds=SEEDS, extra=None):
    """A study directory; ``runs``: {label: seeds} (default: the three configurations above);
    ``extra``: {(label, seed): fields replacing the record's}."""
    runs = runs or {"dpo": SEEDS, "dpo+lsam(1e-1)": SEEDS, "dpo(lr×0.5)": (2, 3)}
    write_json(root / "shared.json", shared_json(seeds))
    for label, ss in runs.items():
        for s in ss:
            rec = study_record(label, s, **(extra or {}).get((label, s), {}))
            write_json(root / "runs" / f"{label}_s{s}" / "record.json", rec)
    return str(root)
