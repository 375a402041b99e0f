"""The study's analysis on a synthetic study directory whose answers are derived by hand (no model is
trained): paired comparisons, the matched-movement control, analyse(), claims on real-shaped records
and the report (report.md, results.json, plots). Every matched-movement number is worked out on paper
from linear trajectories.
"""

import json
import math

import pytest

from logitsam.experiments.records import write_record
from logitsam.experiments.study import analysis
from logitsam.experiments.study.analysis import paired
from logitsam.experiments.study.plan import TUNING_NOTE
from logitsam.experiments.study.summary import analyse
from stats_reference import (
    CLAIMS,
    NAN,
    T2,
    assert_estimate,
    assert_matches_ref,
    ref_crossed,
    ref_t,
    t_interval,
    with_probe_error,
)

# ---------------------------------------------------------------------------------------------------
# paired (analysis.py): two configurations cell by cell
# ---------------------------------------------------------------------------------------------------


def _evals(chosen, rejected, top=None, steps=None):
    """Held-out evaluation records of a run (step 0 first), as the trainer logs them."""
    steps = steps or [10 * i for i in range(len(chosen))]
    top = top or [0.3] * len(chosen)
    return [
        {
            "step": s,
            "eval_loss": 0.7,
            "eval_logps/chosen_drift": c,
            "eval_logps/rejected_drift": r,
            "eval_probs/top_token": t,
        }
        for s, c, r, t in zip(steps, chosen, rejected, top, strict=True)
    ]


def _run(rewards, vs_sft, kl, samples, chosen=(0.0, -1.0), rejected=(0.0, -2.0), top=None, hessian=None):
    rec = {
        "rewards": rewards,
        "outcomes_vs_sft": vs_sft,
        "kl_values": kl,
        "samples": samples,
        "log": _evals(list(chosen), list(rejected), top),
    }
    if hessian:
        rec["hessian"] = {k: {"trace": v, "stderr": 0.1} for k, v in hessian.items()}
    return rec


def _pair_runs():
    """Two configurations on seeds 0, 1 (and a seed 2 only ``a`` has), four prompts, worked by hand."""
    a = {
        0: _run([1, 2, 3, 4], [1, 0, 1, 0.5], [0.5, 1.0, 1.5, 2.0], ["x", "y", "z", "w"], (0, -1.0), (0, -3.0),
                (0.3, 0.40), {"parameter_hessian": 8.0, "logit_hessian": 2.0}),
        1: _run([2, 2, 5, 0], [1, 1, 0, 0.5], [1.0, 1.0, 1.0, 1.0], ["p", "q", "r", "s"], (0, -1.5), (0, -2.0),
                (0.3, 0.45), {"parameter_hessian": 9.0, "logit_hessian": 2.2}),
        2: _run([9, 9, 9, 9], [1, 1, 1, 1], [0.0] * 4, ["a"] * 4),
    }  # fmt: skip
    b = {
        0: _run([1, 3, 2, 4], [1, 0, 0, 0.5], [0.5, 0.5, 1.0, 1.0], ["x", "Y", "Z", "w"], (0, -2.0), (0, -3.5),
                (0.3, 0.42), {"parameter_hessian": 10.0, "logit_hessian": 3.0}),
        1: _run([1, 2, 6, 0], [0, 1, 0, 0.5], [1.0, 0.0, 0.5, 0.8], ["P", "q", "R", "S"], (0, -2.0), (0, -3.0),
                (0.3, 0.46), {"parameter_hessian": 12.0, "logit_hessian": 3.1}),
    }  # fmt: skip
    return a, b


def test_paired_hand_worked():
    a, b = _pair_runs()
    p = paired(a, b)
    assert p["seeds"] == [0, 1] and p["level"] == 0.95
    # head-to-head by reward: seed 0 [½, 0, 1, ½], seed 1 [1, ½, 0, ½] — 4 wins of 8 cells, half of them ties
    h2h = [[0.5, 0.0, 1.0, 0.5], [1.0, 0.5, 0.0, 0.5]]
    assert p["win"]["mean"] == pytest.approx(0.5)
    assert_matches_ref(p["win"], h2h, clip=(0.0, 1.0))
    assert p["ties"] == pytest.approx(4 / 8)
    # identical samples: seed 0 prompts 0 and 3, seed 1 prompt 1 (a tie without an identical sample: s1 p3)
    assert p["identical_samples"] == pytest.approx(3 / 8)
    # the gain in win rate against SFT, cell by cell: [0, 0, 1, 0] and [1, 0, 0, 0]
    gain = [[0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]]
    assert p["win_vs_sft_diff"]["mean"] == pytest.approx(0.25)
    assert_matches_ref(p["win_vs_sft_diff"], gain, clip=(-1.0, 1.0))
    assert_matches_ref(p["reward_diff"], [[0, -1, 1, 0], [1, 0, -1, 0]])
    assert p["kl_diff"]["mean"] == pytest.approx((0 + 0.5 + 0.5 + 1 + 0 + 1 + 0.5 + 0.2) / 8)
    assert_matches_ref(p["kl_diff"], [[0.0, 0.5, 0.5, 1.0], [0.0, 1.0, 0.5, 0.2]])
    # once-per-run measures: t over the seeds' differences (two seeds: 12.706)
    assert_estimate(p["chosen_drift_diff"], *t_interval([1.0, 0.5], 12.706), 2)
    assert_estimate(p["rejected_drift_diff"], *t_interval([0.5, 1.0], 12.706), 2)
    assert_estimate(p["top_token_diff"], *t_interval([-0.02, -0.01], 12.706), 2)
    assert_estimate(p["parameter_hessian_diff"], *with_probe_error(*t_interval([-2.0, -3.0], 12.706), [0.1] * 4), 2)
    assert_estimate(p["logit_hessian_diff"], *with_probe_error(*t_interval([-1.0, -0.9], 12.706), [0.1] * 4), 2)
    # a wider level widens the grid intervals and is recorded
    q = paired(a, b, level=0.99)
    assert q["level"] == 0.99
    assert_matches_ref(q["kl_diff"], [[0.0, 0.5, 0.5, 1.0], [0.0, 1.0, 0.5, 0.2]], level=0.99)
    assert q["kl_diff"]["high"] > p["kl_diff"]["high"]


def test_paired_gain_is_clipped_and_leaves_missing_outcomes_out():
    a, b = _pair_runs()
    # wins against SFT everywhere vs mostly losses: the gain interval would pass +1
    a[0]["outcomes_vs_sft"] = a[1]["outcomes_vs_sft"] = [1, 1, 1, 1]
    b[0]["outcomes_vs_sft"], b[1]["outcomes_vs_sft"] = [0, 0.5, 0, 1], [0, 0, 1, NAN]
    p = paired(a, b)
    # prompt 3 has a failed judgement on seed 1: left out for both seeds; gains [1, ½, 1] and [1, 1, 0]
    r = ref_crossed([[1, 0.5, 1, 0], [1, 1, 0, NAN]])
    assert r["high"] > 1.0
    assert_estimate(p["win_vs_sft_diff"], r["mean"], r["low"], 1.0, 2, abs_tol=1e-7)
    assert p["win_vs_sft_diff"]["mean"] == pytest.approx(4.5 / 6)


def test_paired_needs_common_seeds_and_both_hessians():
    a, b = _pair_runs()
    assert paired({2: a[2]}, b) == {"seeds": []}
    del b[1]["hessian"]
    p = paired(a, b)
    assert "parameter_hessian_diff" not in p and "logit_hessian_diff" not in p
    assert json.loads(json.dumps(p)) == p  # plain JSON (Estimates as dicts)


# ---------------------------------------------------------------------------------------------------
# the matched-movement control (analysis._at_equal, matched)
# ---------------------------------------------------------------------------------------------------


def _traj(chosen, rejected):
    return {"log": _evals(chosen, rejected)}


def test_at_equal_reads_the_run_that_got_there():
    plain = _traj([0.0, -1.0, -1.6], [0.0, -1.0, -2.0])
    # SAM stopped at Δ− = −1.5, which plain passed: plain's Δ+ there is −1.3 → SAM's −0.5 minus it = 0.8
    sam = _traj([0.0, -0.2, -0.5], [0.0, -0.75, -1.5])
    assert analysis._at_equal(sam, plain, analysis._rejected) == pytest.approx(-0.5 - (-1.3))
    # SAM went further (Δ− = −3) than plain ever did (−2): read SAM at plain's final Δ− = −2, a third of the
    # way from (−1.5, −0.5) to (−3, −1): Δ+ = −2/3; minus plain's final −1.6 → +0.9333 (still SAM − plain)
    far = _traj([0.0, -0.5, -1.0], [0.0, -1.5, -3.0])
    assert analysis._at_equal(far, plain, analysis._rejected) == pytest.approx(-2 / 3 + 1.6)
    # margin Δ+ − Δ−: plain 0, 0, 0.4; far 0, 1, 2 → plain's final margin 0.4 is reached by far at 0.4 of
    # its first segment: Δ+ = −0.2 → −0.2 − (−1.6) = 1.4
    assert analysis._at_equal(far, plain, analysis._margin) == pytest.approx(1.4)
    # movements in opposite directions: no match either way
    up = _traj([0.0, 0.5, 1.0], [0.0, 0.5, 1.0])
    assert math.isnan(analysis._at_equal(up, plain, analysis._rejected))
    assert math.isnan(analysis._at_equal(_traj([], []), plain, analysis._rejected))


def test_matched_counts_seeds_with_a_match_and_bracketing():
    def run(chosen, rejected, kl, rewards):
        return {"log": _evals(chosen, rejected), "kl_values": kl, "rewards": rewards}

    plain = {
        0: run([0, -1.0, -1.6], [0, -1.0, -2.0], [2.0, 2.0], [0.2, 0.4]),
        1: run([0, -1.0, -2.0], [0, -2.0, -4.0], [3.0, 3.0], [0.5, 0.5]),
        2: run([0, -1.0, -2.0], [0, -2.0, -4.0], [3.0, 3.0], [0.5, 0.5]),
    }
    sam = {
        0: run([0, -0.2, -0.5], [0, -0.75, -1.5], [1.5, 1.5], [0.4, 0.4]),  # KL 1.5: inside [1, 2]
        1: run([0, -0.5, -1.0], [0, -1.5, -3.0], [3.5, 3.5], [0.6, 0.6]),  # KL 3.5: beyond [2, 3]
        2: run([0, 0.5, 1.0], [0, 0.5, 1.0], [1.0, 1.0], [0.5, 0.5]),  # moves the other way: no match
    }
    small = {
        0: run([0, -0.5, -1.0], [0, -1.0, -2.0], [1.0, 1.0], [0.1, 0.1]),
        1: run([0, -0.5, -1.5], [0, -1.0, -2.0], [2.0, 2.0], [0.3, 0.3]),
    }
    mm = analysis.matched(sam, plain, small)
    assert mm["seeds"] == [0, 1, 2]
    # equal rejected drift: s0 0.8 (as above); s1 plain's Δ+ at Δ− = −3 is −1.5 → −1 + 1.5 = 0.5; s2 none
    assert mm["equal_rejected_seeds"] == 2
    assert_estimate(mm["equal_rejected"], *t_interval([0.8, 0.5], 12.706), 2)
    # equal KL on the line (KL, Δ+) through small and plain:
    #   s0 (1, −1)–(2, −1.6) at 1.5 → −1.3: −0.5 + 1.3 = 0.8 (inside); s1 (2, −1.5)–(3, −2) at 3.5 → −2.25: 1.25
    assert mm["equal_kl_bracketed"] == {"seeds_bracketed": 1, "of": 2}
    assert mm["equal_kl_seeds"] == 2
    assert_estimate(mm["equal_kl"], *t_interval([0.8, 1.25], 12.706), 2)
    # reward on the same lines: s0 (1, 0.1)–(2, 0.3) at 1.5 → 0.2, SAM 0.4 → 0.2; s1 (2, 0.3)–(3, 0.5) at 3.5 → 0.6
    assert_estimate(mm["reward_at_equal_kl"], *t_interval([0.2, 0.0], 12.706), 2, abs_tol=1e-9)
    # without the half-step runs there is no equal-KL comparison
    assert "equal_kl" not in analysis.matched(sam, plain, {})


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


def _trajectory(label, seed):
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


def _record(label, seed, key=KEY, reward_shift=None, **extra):
    c, r, top = _trajectory(label, seed)
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


def _write(path, obj):
    """JSON to ``path``; a run record is written as the study writes it (with its checksum)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name == "record.json":
        write_record(str(path), {k: v for k, v in obj.items() if k != "checksum"})
    else:
        path.write_text(json.dumps(obj), encoding="utf-8")


def _shared(seeds=SEEDS):
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
    _write(root / "shared.json", _shared(seeds))
    for label, ss in runs.items():
        for s in ss:
            rec = _record(label, s, **(extra or {}).get((label, s), {}))
            _write(root / "runs" / f"{label}_s{s}" / "record.json", rec)
    return str(root)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    out = build_study(root)
    # records of other study settings: sorted after the real ones (would overwrite seed 2) and a new seed
    _write(root / "runs" / "zz_stale_dpo_s2" / "record.json", _record("dpo", 2, key="old", reward_shift=100.0))
    _write(root / "runs" / "zz_stale_dpo_s9" / "record.json", _record("dpo", 2, key="old") | {"spec": {"seed": 9}})
    return out, analyse(out)


PLAN_ORDER = [
    "dpo",
    "dpo+lsam(1e-1)",
    "dpo(lr×0.5)",
    "slic",
    "slic+lsam(1e0)",
    "cpo",
    "cpo+lsam(1e-1)",
    "dpo+lsam(1e-3)",
    "dpo+lsam(1e-2)",
    "dpo+lsam(1e0)",
    "dpo+lsam(1e-4)",
    "gate_dpo",
    "dpo_abs",
    "spo_target",
    "dpo+fullsam(1e-2)",
]


def test_analyse_loads_only_records_of_this_study(study):
    _, res = study
    assert list(res["configs"]) == ["dpo", "dpo+lsam(1e-1)", "dpo(lr×0.5)"]  # the plan's order
    assert res["configs"]["dpo"]["seeds"] == [2, 3, 4]
    assert res["configs"]["dpo(lr×0.5)"]["seeds"] == [2, 3]
    assert res["configs"]["dpo"]["reward"]["mean"] == pytest.approx(0.35)  # the stale +100 is ignored
    assert res["planned_seeds"] == [2, 3, 4]
    assert (res["prompts"], res["chosen_prompts"]) == (6, 4)
    assert res["pairs"] == {"train": 10, "heldout": 4}
    assert res["configs"]["dpo+lsam(1e-1)"]["plain"] == "dpo"
    assert res["configs"]["dpo"]["plain"] is None
    # what the report states besides the estimates
    assert res["tuning"] == TUNING_NOTE  # the plan's note, not whatever shared.json carries
    assert res["planned"] == PLAN_ORDER
    assert res["hessian_pairs"] == 4


def test_analyse_configuration_rows(study):
    _, res = study
    dpo, sam = res["configs"]["dpo"], res["configs"]["dpo+lsam(1e-1)"]
    # win rates: every seed has the same outcomes, so the interval is the t interval over the prompts kept
    # (prompt 4 has no judgement for DPO: left out), cut at 100%
    assert dpo["win_vs_sft"]["mean"] == pytest.approx(0.7)  # 3.5 / 5
    m, lo, hi = t_interval([1.0, 0.0, 1.0, 0.5, 1.0], ref_t(4))
    assert hi > 1.0
    assert_estimate(dpo["win_vs_sft"], m, lo, 1.0, 3, abs_tol=1e-7)
    m, lo, hi = t_interval([1.0, 1.0, 1.0, 0.5, 1.0], ref_t(4))
    assert_estimate(sam["win_vs_sft"], m, lo, 1.0, 3, abs_tol=1e-7)
    assert sam["win_vs_sft"]["mean"] == pytest.approx(0.9)
    m, lo, hi = t_interval([1.0, 0.0, 0.0, 1.0], ref_t(3))
    assert_estimate(dpo["win_vs_chosen"], 0.5, 0.0, 1.0, 3, abs_tol=1e-7)  # cut at both ends
    assert lo < 0.0 and hi > 1.0
    # reward = base(prompt) + offset(seed): additive, no cell term. MS_seed = 6·(0² + 0.1² + 0.1²)/2 = 0.06,
    # MS_prompt = 3·Σ(base − 0.35)²/5 = 3·0.175/5 = 0.105; Var(mean) = 0.165/18; df = 0.165²/(0.06²/2 + 0.105²/5)
    half = ref_t(0.165**2 / (0.06**2 / 2 + 0.105**2 / 5)) * math.sqrt(0.165 / 18)
    assert_estimate(dpo["reward"], 0.35, 0.35 - half, 0.35 + half, 3, abs_tol=1e-7)
    assert_estimate(sam["reward"], 0.40, 0.40 - half, 0.40 + half, 3, abs_tol=1e-7)  # shifted by +0.05
    # KL = seed level + shape(prompt): MS_seed = 6·(0.2² + 0.2²)/2 = 0.24, MS_prompt = 3·0.1/5 = 0.06
    half = ref_t(0.3**2 / (0.24**2 / 2 + 0.06**2 / 5)) * math.sqrt(0.3 / 18)
    assert_estimate(dpo["kl"], 2.0, 2.0 - half, 2.0 + half, 3, abs_tol=1e-7)
    assert_matches_ref(sam["kl"], [[KL["dpo+lsam(1e-1)"][s] + k for k in KL_SHAPE] for s in SEEDS])
    assert sam["kl"]["mean"] == pytest.approx((1.5 + 2.5 + 1.4) / 3)
    assert sam["kl"]["low"] < 1.0  # KL and reward are not cut (only rates are)
    # held-out measures: t over seeds
    assert_estimate(dpo["chosen_drift_final"], *t_interval([-2.0, -2.4, -1.6], 4.303), 3)
    assert_estimate(dpo["rejected_drift_final"], *t_interval([-4.0, -4.8, -3.2], 4.303), 3)
    assert_estimate(dpo["chosen_drift_min"], *t_interval([-2.0, -2.4, -1.6], 4.303), 3)
    assert_estimate(sam["chosen_drift_final"], *t_interval([-1.1, -1.4, -0.5], 4.303), 3)
    assert_estimate(sam["chosen_drift_min"], *t_interval([-1.55, -1.7, -1.25], 4.303), 3)  # the dip
    assert dpo["top_token_final"]["mean"] == pytest.approx(0.34)
    assert dpo["top_token_final"]["low"] == pytest.approx(0.34)  # same on every seed
    small = res["configs"]["dpo(lr×0.5)"]
    assert_estimate(small["chosen_drift_final"], *t_interval([-1.0, -1.3], 12.706), 2)
    # Hessian traces
    assert dpo["logit_hessian"]["by_seed"] == {
        s: {"trace": HESSIAN["dpo"]["logit_hessian"][s], "stderr": 0.1, "probes": 8} for s in SEEDS
    }
    assert_estimate(dpo["parameter_hessian"]["mean"], *t_interval([10.0, 12.0, 11.0], 4.303), 3)
    assert "logit_hessian" not in small
    # SFT: one "seed", the t interval over prompts (the missing judgement left out), cut to [0, 1]
    m, lo, hi = t_interval([1.0, 0.0, 0.5], T2)
    assert_estimate(res["sft"]["win_vs_chosen"], 0.5, 0.0, 1.0, 1, abs_tol=1e-7)
    assert lo < 0
    assert_estimate(res["sft"]["reward"], *t_interval([0.0, 0.1, 0.2, 0.3, 0.4, 0.5], ref_t(5)), 1, abs_tol=1e-7)


def test_analyse_paired_comparisons(study):
    _, res = study
    p = res["paired"]["dpo+lsam(1e-1)"]
    assert p["against"] == "dpo" and p["seeds"] == [2, 3, 4] and p["level"] == 0.95
    # SAM's reward is higher on every prompt of every seed: it wins every head-to-head, without ties
    assert p["win"] == {"mean": 1.0, "low": 1.0, "high": 1.0, "n": 3}
    assert p["ties"] == 0.0 and p["identical_samples"] == 0.0
    # gain in win rate against SFT, cell by cell: [0, 1, 0, 0] on every seed (prompts 4, 5 unjudged for one
    # of the two): the t interval over those four prompts (3 df), cut at +1
    m, lo, _ = t_interval([0.0, 1.0, 0.0, 0.0], ref_t(3))
    assert (m, lo) == pytest.approx((0.25, 0.25 - ref_t(3) * 0.25))
    assert_estimate(p["win_vs_sft_diff"], 0.25, lo, 1.0, 3, abs_tol=1e-7)
    # reward: +0.05 in every cell; KL: a per-seed shift only — the t interval over the seeds' shifts
    assert_estimate(p["reward_diff"], 0.05, 0.05, 0.05, 3)
    assert_estimate(p["kl_diff"], *t_interval([-0.5, 0.3, -0.4], T2), 3, abs_tol=1e-7)
    assert_estimate(p["chosen_drift_diff"], *t_interval([0.9, 1.0, 1.1], 4.303), 3)
    assert p["chosen_drift_diff"]["low"] == pytest.approx(1.0 - 4.303 * 0.1 / math.sqrt(3))
    assert_estimate(p["rejected_drift_diff"], *t_interval([1.5, 1.8, 1.8], 4.303), 3)
    assert_estimate(p["top_token_diff"], -0.02, -0.02, -0.02, 3)
    assert_estimate(
        p["parameter_hessian_diff"], *with_probe_error(*t_interval([-2.0, -3.0, -1.5], 4.303), [0.1] * 6), 3
    )
    assert_estimate(p["logit_hessian_diff"], *with_probe_error(*t_interval([-1.0, -1.1, -0.9], 4.303), [0.1] * 6), 3)
    # the half-step run: only the seeds both have; it loses every head-to-head
    q = res["paired"]["dpo(lr×0.5)"]
    assert q["against"] == "dpo" and q["seeds"] == [2, 3]
    assert q["win"] == {"mean": 0.0, "low": 0.0, "high": 0.0, "n": 2}
    # its gain against SFT: [−1, 0, 0, 0, ·, 0] on both seeds → t over five prompts
    assert_estimate(q["win_vs_sft_diff"], *t_interval([-1.0, 0.0, 0.0, 0.0, 0.0], ref_t(4)), 2, abs_tol=1e-7)
    assert_estimate(q["chosen_drift_diff"], *t_interval([1.0, 1.1], 12.706), 2)
    assert "logit_hessian_diff" not in q  # the half-step run has no Hessian
    assert "dpo" not in res["paired"]
    # one ρ: the "sweep" is ρ = 0.1 alone, at the unadjusted level
    assert res["rho_sweep_adjusted"] == {"dpo+lsam(1e-1)": {k: v for k, v in p.items() if k != "against"}}


def test_analyse_matched_movement(study):
    _, res = study
    mm = res["matched_movement"]
    assert mm["seeds"] == [2, 3, 4]
    # DPO's Δ+ where its Δ− reaches SAM's final Δ−: Δ+ = Δ−/2 on DPO's line → SAM Δ+ − Δ−_SAM/2
    #   s2: −1.1 − (−2.5/2) = 0.15; s3: −1.4 + 1.5 = 0.1; s4: −0.5 + 0.7 = 0.2
    assert_estimate(mm["equal_rejected"], *t_interval([0.15, 0.1, 0.2], 4.303), 3)
    assert mm["equal_rejected"]["mean"] == pytest.approx(0.15)
    assert mm["equal_rejected_seeds"] == 3
    # at SAM's final margin m = Δ+ − Δ−: DPO's margin is −Δ+, so DPO's Δ+ there is −m → Δ+_SAM + m
    #   s2: −1.1 + 1.4 = 0.3; s3: −1.4 + 1.6 = 0.2; s4: −0.5 + 0.9 = 0.4
    assert_estimate(mm["equal_margin"], *t_interval([0.3, 0.2, 0.4], 4.303), 3)
    # at SAM's KL on the line through (KL, Δ+) of DPO(lr×0.5) and DPO, seeds with both (2, 3):
    #   s2: line (1.0, −1.0)–(2.0, −2.0) at 1.5 → −1.5; −1.1 + 1.5 = 0.4 (bracketed)
    #   s3: line (1.2, −1.3)–(2.2, −2.4) at 2.5 → −2.73; −1.4 + 2.73 = 1.33 (extrapolated)
    assert_estimate(mm["equal_kl"], *t_interval([0.4, 1.33], 12.706), 2)
    assert mm["equal_kl_seeds"] == 2
    assert mm["equal_kl_bracketed"] == {"seeds_bracketed": 1, "of": 2}
    #   rewards: s2 line (1.0, 0.25)–(2.0, 0.35) at 1.5 → 0.30, SAM 0.40 → 0.10;
    #            s3 line (1.2, 0.35)–(2.2, 0.45) at 2.5 → 0.48, SAM 0.50 → 0.02
    assert_estimate(mm["reward_at_equal_kl"], *t_interval([0.10, 0.02], 12.706), 2)
    v = mm["vs_small_step"]
    assert v["seeds"] == [2, 3] and v["win"]["mean"] == 1.0
    assert v["chosen_drift_diff"]["mean"] == pytest.approx(-0.1)


def test_analyse_matched_movement_when_sam_moved_further(tmp_path):
    # seed 2: SAM ends at Δ− = −5 (linear, Δ+ as before); DPO only reaches −4 (a = 1). Read SAM's trajectory at
    # DPO's final Δ− = −4: at t = 3.2 of 4, between its points at t = 3 (0.75·C) and t = 4 (C), C = −1.1:
    # Δ+ = 0.8·C = −0.88; DPO's final Δ+ is −2 → −0.88 + 2 = 1.12
    out = build_study(tmp_path)
    path = tmp_path / "runs" / "dpo+lsam(1e-1)_s2" / "record.json"
    rec = json.loads(path.read_text(encoding="utf-8"))
    for r in rec["log"]:
        if "eval_loss" in r:
            r["eval_logps/rejected_drift"] = -5.0 * r["step"] / 40
    _write(path, rec)
    mm = analyse(out)["matched_movement"]
    assert_estimate(mm["equal_rejected"], *t_interval([1.12, 0.1, 0.2], 4.303), 3)
    assert mm["equal_rejected_seeds"] == 3


def test_analyse_claims(study):
    _, res = study
    by = {c["claim"]: c for c in res["claims"]}
    assert [c["claim"] for c in res["claims"]] == CLAIMS  # every claim is listed, measured or not

    def find(prefix):
        (c,) = [c for claim, c in by.items() if claim.startswith(prefix)]
        return c

    squeeze = find("logits-SAM reduces the squeezing")
    assert squeeze["verdict"] == "reproduced"
    assert "+1.00 [+0.75, +1.25]" in squeeze["evidence"] and "3 seeds" in squeeze["evidence"]
    assert "plain DPO's Δ+ -2.00 [-2.99, -1.01]" in squeeze["evidence"]
    # the head-to-head is 100%, but the gain in win rate against SFT (+25 pp) is not resolved on four prompts
    win = find("logits-SAM raises DPO's win rate")
    assert win["verdict"] == "inconclusive"
    assert (
        "dpo+lsam(1e-1) − dpo: +25.0 [-54.6, +100.0] pp (the interval reaches the effect of interest" in win["evidence"]
    )
    assert "head-to-head 100.0 [100.0, 100.0]%" in win["evidence"]
    assert "(0% ties, 0% identical samples); KL difference -0.20 [-1.28, +0.88] nats" in win["evidence"]
    for name in ("SLiC-HF", "CPO"):
        c = find(f"logits-SAM raises {name}'s win rate")
        assert c["verdict"] == "not measured" and c["evidence"].startswith("runs missing")
    for kind, verdict_, rel in (
        ("parameter", "reproduced", "1–1% of the trace (8 probes), within the 5% target"),
        ("logit", "inconclusive", "3–5% of the trace (8 probes), above the 5% target"),
    ):
        c = find(f"logits-SAM finds flatter solutions (§4.3: lower {kind}")  # logit traces ≈ 1.9 ± 0.1: 5.3%
        assert c["verdict"] == verdict_ and "Hutchinson estimate on 4 held-out pairs" in c["evidence"]
        assert rel in c["evidence"]
    matched = find("the squeezing reduction is not just a smaller step")
    assert matched["verdict"] == "reproduced"
    assert "3 of 3 seeds" in matched["evidence"] and "1 of 2 seeds inside the two DPO runs" in matched["evidence"]
    assert find("some ρ of the sweep")["verdict"] == "not measured"  # one ρ only


def test_analyse_claim_verdicts_follow_the_data(tmp_path):
    """SAM loses to SFT more often than DPO and its Δ+ is below DPO's: the same claims come out reversed."""
    out = build_study(tmp_path, runs={"dpo": SEEDS})
    for s in SEEDS:
        rec = _record("dpo+lsam(1e-1)", s, reward_shift=-0.05, outcomes_vs_sft=[0.0] * 6)
        for r in rec["log"]:
            if "eval_loss" in r:
                r["eval_logps/chosen_drift"] = 2 * _trajectory("dpo", s)[0][STEPS.index(r["step"])] - 0.1 * s
        _write(tmp_path / "runs" / f"dpo+lsam(1e-1)_s{s}" / "record.json", rec)
    res = analyse(out)
    p = res["paired"]["dpo+lsam(1e-1)"]
    assert p["win"] == {"mean": 0.0, "low": 0.0, "high": 0.0, "n": 3}
    # gain against SFT: [−1, 0, −1, −½, ·, −1] on every seed → mean −0.7, t over five prompts
    m, lo, hi = t_interval([-1.0, 0.0, -1.0, -0.5, -1.0], ref_t(4))
    assert lo < -1.0 < hi < 0  # cut at −1
    assert_estimate(p["win_vs_sft_diff"], m, -1.0, hi, 3, abs_tol=1e-7)
    # Δ+ differences: final 2·(−2a) − 0.1 s − (−2a) = −2a − 0.1 s = −2.2, −2.7, −2.0
    assert_estimate(p["chosen_drift_diff"], *t_interval([-2.2, -2.7, -2.0], 4.303), 3)
    v = {c["claim"].split(" (")[0]: c["verdict"] for c in res["claims"]}
    assert v["logits-SAM reduces the squeezing of held-out chosen responses in DPO"] == "not reproduced"
    assert v["logits-SAM raises DPO's win rate against SFT"] == "not reproduced"
    assert res["matched_movement"]["seeds"] == [2, 3, 4]
    assert "equal_kl" not in res["matched_movement"]  # no half-step runs


def test_analyse_a_gain_bought_with_kl_is_inconclusive(tmp_path):
    # SAM wins against SFT where DPO did not, on 12 prompts and every seed, but its KL is 1 nat higher on every
    # seed (± a prompt shape): the gain is resolved, the KL difference too
    dpo_vs = [1.0, 0.0, 1.0, 0.0, 0.5, 1.0, 0.0, 1.0, 0.0, 0.5, 1.0, 0.0]
    extra = {}
    for s in SEEDS:
        extra[("dpo", s)] = {"outcomes_vs_sft": dpo_vs}
        extra[("dpo+lsam(1e-1)", s)] = {
            "outcomes_vs_sft": [1.0] * 12,
            "kl_values": [KL["dpo"][s] + 1.0 + 0.1 * s + k for k in KL_SHAPE],
        }
    out = build_study(tmp_path, runs={"dpo": SEEDS, "dpo+lsam(1e-1)": SEEDS}, extra=extra)
    res = analyse(out)
    p = res["paired"]["dpo+lsam(1e-1)"]
    assert_matches_ref(p["win_vs_sft_diff"], [[1.0 - x for x in dpo_vs]] * 3, clip=(-1.0, 1.0))
    assert p["win_vs_sft_diff"]["low"] > 0
    assert_estimate(p["kl_diff"], *t_interval([1.2, 1.3, 1.4], T2), 3, abs_tol=1e-7)
    assert p["kl_diff"]["low"] > 0
    (win,) = [c for c in res["claims"] if c["claim"].startswith("logits-SAM raises DPO's")]
    assert win["verdict"] == "inconclusive (the gain came with more KL)"


@pytest.mark.slow
def test_analyse_rho_sweep_at_the_bonferroni_level(tmp_path):
    """Four values of ρ: each is compared with DPO at 95% and, for picking the best, at 1 − 0.05/4."""
    dpo_vs = [0.5] * 8
    sweep = {  # outcomes against SFT by seed 2, 3, 4 (8 prompts); DPO ties SFT everywhere
        "dpo+lsam(1e-1)": [[0.5, 0.5, 0.5, 1, 0.5, 0, 0.5, 0.5], [0.5, 0.5, 0, 0.5, 0.5, 1, 0.5, 0.5], [0.5] * 4 + [1] + [0.5] * 3],
        "dpo+lsam(1e-2)": [[1, 0.5, 0.5, 0.5, 1, 1, 0.5, 0.5], [0.5, 1, 1, 0.5, 0.5, 0.5, 0.5, 1], [0.5, 0.5, 0.5, 1, 0.5, 0.5, 1, 0.5]],
        "dpo+lsam(1e-3)": [[1, 0.5, 0.5, 0.5, 0.5, 1, 0.5, 0.5], [0.5, 0.5, 1] + [0.5] * 5, [0.5] * 8],
        "dpo+lsam(1e0)": [[0, 0.5, 0.5, 1, 0.5, 0, 0.5, 0.5], [0.5, 0.5, 0, 0.5, 0.5, 1, 0.5, 0], [0.5, 0, 0.5, 0.5, 1, 0.5, 0.5, 0.5]],
    }  # fmt: skip
    extra = {("dpo", s): {"outcomes_vs_sft": dpo_vs} for s in SEEDS}
    for label, rows in sweep.items():
        for s, row in zip(SEEDS, rows, strict=True):
            extra[(label, s)] = {"outcomes_vs_sft": [float(x) for x in row]}
    out = build_study(tmp_path, runs={"dpo": SEEDS, **{lb: SEEDS for lb in sweep}}, extra=extra)
    res = analyse(out)
    level = 1 - 0.05 / 4
    assert set(res["rho_sweep_adjusted"]) == set(sweep)
    refs = {}
    for label, rows in sweep.items():
        gain = [[x - 0.5 for x in row] for row in rows]
        assert_matches_ref(res["paired"][label]["win_vs_sft_diff"], gain, clip=(-1.0, 1.0))
        adj = res["rho_sweep_adjusted"][label]
        assert adj["level"] == level and adj["seeds"] == [2, 3, 4] and "against" not in adj
        refs[label] = assert_matches_ref(adj["win_vs_sft_diff"], gain, level=level, clip=(-1.0, 1.0))
        # everything else of the pair is there too, at the adjusted level
        assert_matches_ref(adj["kl_diff"], [[KL["dpo+lsam(1e-1)"][s] - KL["dpo"][s]] * 6 for s in SEEDS], level=level)
    # the best ρ (by the adjusted mean) is 1e-2: its gain excludes 0 at 95% but not at 98.75%
    best = max(refs, key=lambda lb: refs[lb]["mean"])
    assert best == "dpo+lsam(1e-2)"
    assert res["paired"][best]["win_vs_sft_diff"]["low"] > 0 > refs[best]["low"]
    (rho,) = [c for c in res["claims"] if c["claim"].startswith("some ρ of the sweep")]
    assert rho["verdict"] == "inconclusive"
    assert "Family-wise (98.75% each): ρ=0.001: " in rho["evidence"]
    assert "minimal detectable effect at 80% power of the best (dpo+lsam(1e-2))" in rho["evidence"]
    assert rho["evidence"].startswith("win-rate gain over DPO by ρ (95%): ρ=0.001: ")
    # the DPO claim (ρ = 0.1) is judged at 95% on its own
    (dpo,) = [c for c in res["claims"] if c["claim"].startswith("logits-SAM raises DPO's")]
    assert dpo["verdict"] == "inconclusive"


def test_analyse_one_seed_is_not_measured(tmp_path):
    out = build_study(tmp_path, runs={"dpo": (2,), "dpo+lsam(1e-1)": (2,)})
    res = analyse(out)
    p = res["paired"]["dpo+lsam(1e-1)"]
    assert p["seeds"] == [2] and p["win"]["mean"] == 1.0 and p["win"]["n"] == 1
    assert p["chosen_drift_diff"]["mean"] == pytest.approx(0.9) and math.isnan(p["chosen_drift_diff"]["low"])
    assert {c["verdict"] for c in res["claims"]} == {"not measured"}


def test_trajectory_and_final_use_evaluation_records_only():
    rec = _record("dpo", 3)
    steps, vals = analysis.trajectory(rec, "eval_logps/chosen_drift")
    assert steps == list(STEPS)
    assert vals == pytest.approx([0.0, -0.6, -1.2, -1.8, -2.4])
    assert analysis.final(rec, "eval_logps/rejected_drift") == pytest.approx(-4.8)
    assert math.isnan(analysis.final({"log": [{"step": 1, "loss": 0.5}]}, "eval_logps/chosen_drift"))


# ---------------------------------------------------------------------------------------------------
# report.md, results.json and the plots
# ---------------------------------------------------------------------------------------------------


def _strict_json(path):
    def refuse(token):
        raise AssertionError(f"{path.name} is not strict JSON: {token}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def test_study_report_into_a_read_only_directory_is_one_line(tmp_path, monkeypatch, capsys):
    """--report-only where writing is refused (a read-only directory: simulated, the tests may run as root):
    one line naming the file, exit 2, no traceback, and the records untouched."""
    import builtins
    import errno

    from logitsam import cli

    out = build_study(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    real_open = builtins.open

    def refusing(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and str(file).startswith(str(tmp_path)):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing)
    assert cli.main(["study", "--out", out, "--report-only"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("logitsam: error: cannot write ") and "Permission denied" in err[0]
    monkeypatch.setattr(builtins, "open", real_open)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_study_report_where_a_directory_stands_is_one_line(tmp_path, capsys):
    """A folder named report.md used to end in IsADirectoryError's traceback; the records stay untouched."""
    from logitsam import cli

    out = build_study(tmp_path)
    (tmp_path / "report.md").mkdir()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert cli.main(["study", "--out", out, "--report-only"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "report.md" in err[0] and "a directory is in its place" in err[0], err
    assert all(p.read_bytes() == b for p, b in before.items())  # the records and everything else kept


@pytest.mark.slow
def test_write_study_report_on_the_synthetic_study(tmp_path):
    from logitsam.experiments.study.study_report import PNG, write_study_report

    out = build_study(tmp_path)
    text = write_study_report(out)
    assert "- **reproduced** — logits-SAM reduces the squeezing" in text  # the claims, one line each
    assert len(text.splitlines()) == 9
    res = _strict_json(tmp_path / "results.json")
    assert res["paired"]["dpo+lsam(1e-1)"]["win"]["mean"] == 1.0
    assert [c["verdict"] for c in res["claims"]] == [c["verdict"] for c in analyse(out)["claims"]]
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "## Claims" in md and "**reproduced** — logits-SAM reduces the squeezing" in md
    assert "| vs plain: win-rate gain pp / head-to-head % |" in md
    assert (
        "| dpo+lsam(1e-1) | 3 | 90.0 [62.2, 100.0] | 75.0 [0.0, 100.0] "
        "| 25.0 [-54.6, 100.0] / 100.0 [100.0, 100.0] vs dpo (3 seeds) |"
    ) in md
    assert "| dpo | 3 | 70.0 [14.5, 100.0] | 50.0 [0.0, 100.0] | – |" in md
    assert "Tuning: ρ = 0.1 for DPO + logits-SAM was chosen on the demo's tuning seed 0" in md
    assert md.splitlines()[2] == (
        "**Status: 8 of 51 planned runs finished**; fewer seeds than planned: dpo(lr×0.5); not run yet: slic, "
        "slic+lsam(1e0), cpo, cpo+lsam(1e-1), dpo+lsam(1e-3), dpo+lsam(1e-2), dpo+lsam(1e0), dpo+lsam(1e-4), "
        "gate_dpo, dpo_abs, spo_target, dpo+fullsam(1e-2), the confirmation of the sweep's ρ on fresh seeds — "
        f"`logitsam study --out {out}` resumes."
    )
    for name in PNG.values():
        png = tmp_path / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, name
        assert f"]({name})" in md


@pytest.mark.slow
def test_write_study_report_drift_plot_uses_the_steps_every_seed_logged(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    from logitsam.experiments.study.study_report import write_study_report

    out = build_study(tmp_path)
    # DPO's seed 3 missed its step-20 evaluation, seed 4 has one more at step 50
    for seed, change in ((3, lambda log: [r for r in log if not (r["step"] == 20 and "eval_loss" in r)]),
                         (4, lambda log: [*log, dict(log[-2], step=50)])):  # fmt: skip
        path = tmp_path / "runs" / f"dpo_s{seed}" / "record.json"
        rec = json.loads(path.read_text(encoding="utf-8"))
        rec["log"] = change(rec["log"])
        _write(path, rec)
    drawn = []
    plot = Axes.plot

    def record_plot(self, *args, **kw):
        drawn.append((kw.get("label"), list(args[0]) if args else None))
        return plot(self, *args, **kw)

    monkeypatch.setattr(Axes, "plot", record_plot)
    write_study_report(out)
    by = {}
    for label, xs in drawn:
        by.setdefault(label, []).append(xs)
    assert by["dpo (3 seeds)"] == [[0, 10, 30, 40]] * 2  # chosen and rejected panels
    assert by["dpo+lsam(1e-1) (3 seeds)"] == [list(STEPS)] * 2
    assert by["dpo(lr×0.5) (2 seeds)"] == [list(STEPS)] * 2


# ---------------------------------------------------------------------------------------------------
# configurations finished on different seeds (seeds are not part of the study key, so
# `logitsam study --groups dpo --seeds 2` then `--groups dpo-small-step --seeds 3` into one directory)
# ---------------------------------------------------------------------------------------------------


def test_analyse_with_no_common_seed_between_sam_and_dpo(tmp_path):
    out = build_study(tmp_path, runs={"dpo": (2,), "dpo+lsam(1e-1)": (3,)})
    res = analyse(out)
    assert "dpo+lsam(1e-1)" not in res["paired"]  # nothing to pair: no comparison, not an empty one
    assert res["rho_sweep_adjusted"] == {}
    assert {c["verdict"] for c in res["claims"]} == {"not measured"}


@pytest.mark.slow
def test_write_study_report_with_no_common_seed_for_the_half_step_control(tmp_path):
    from logitsam.experiments.study.study_report import write_study_report

    out = build_study(tmp_path, runs={"dpo": (2,), "dpo(lr×0.5)": (3,)}, seeds=(2,))
    write_study_report(out)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| dpo(lr×0.5) | 1 |" in md
    # one seed: no interval — written as null in strict JSON
    res = _strict_json(tmp_path / "results.json")
    assert res["configs"]["dpo"]["chosen_drift_final"]["low"] is None
    assert res["configs"]["dpo"]["chosen_drift_final"]["mean"] == pytest.approx(-2.0)
    assert "not run yet: dpo+lsam(1e-1), slic," in md


def test_reference_free_runs_get_their_drift_from_the_step_0_log_probs():
    """SLiC-HF and CPO log no drift (no reference in the loss); every run starts at the reference, so
    their held-out drift is the held-out log-prob minus its step-0 value."""
    rec = {
        "log": [
            {"step": 0, "eval_loss": 1.0, "eval_logps/chosen": -120.0, "eval_logps/rejected": -125.0},
            {"step": 1, "loss": 2.0, "logps/chosen": -110.0},
            {"step": 5, "eval_loss": 0.9, "eval_logps/chosen": -121.5, "eval_logps/rejected": -127.0},
        ]
    }
    assert analysis.trajectory(rec, "eval_logps/chosen_drift") == ([0, 5], [0.0, -1.5])
    assert analysis.final(rec, "eval_logps/rejected_drift") == -2.0
    # a logged drift is used as logged
    rec["log"][2]["eval_logps/chosen_drift"] = -1.25
    rec["log"][0]["eval_logps/chosen_drift"] = 0.0
    assert analysis.trajectory(rec, "eval_logps/chosen_drift") == ([0, 5], [0.0, -1.25])


PICK = {"key": KEY, "label": "dpo+lsam(1e-2)", "rho": 0.01, "sweep_seeds": [2, 3, 4], "gains": {}}


def _confirm_record(label, seed, base, vs_sft):
    rec = _record("dpo+lsam(1e-1)" if "lsam" in label else "dpo", base)
    rec["spec"] = rec["spec"] | {"seed": seed, "name": f"confirm/{label}/s{seed}"}
    rec["method"], rec["config"] = label, {"label": label, "hessian": False, "confirm": True}
    rec["outcomes_vs_sft"] = vs_sft
    return rec


@pytest.mark.slow
def test_analyse_keeps_confirmation_runs_apart(tmp_path):
    """Confirmation records (config.confirm) do not enter the plan's rows or comparisons; with the saved
    pick they form the confirmation comparison (the pick against DPO on fresh seeds) and its table rows;
    records of another ρ or on a seed the plan trained on are left out."""
    out = build_study(tmp_path)
    before = analyse(out)
    gain = {5: [1.0, 0.5, 0.5, 0.5, 1.0, 0.5], 6: [0.5, 1.0, 0.5, 0.5, 0.5, 0.5], 7: [0.5, 0.5, 0.5, 1.0, 0.0, 0.5]}
    for label in ("dpo", "dpo+lsam(1e-1)", "dpo+lsam(1e-2)"):
        for seed, base in zip((5, 6, 7), SEEDS, strict=True):
            rec = _confirm_record(label, seed, base, [0.5] * 6 if label == "dpo" else gain[seed])
            _write(tmp_path / "runs" / f"confirm_{label}_s{seed}" / "record.json", rec)
    # a "confirmation" on seed 2, which the plan trained on: not fresh
    _write(tmp_path / "runs" / "confirm_dpo_s2" / "record.json", _confirm_record("dpo", 2, 2, [1.0] * 6))
    res = analyse(out)
    assert res["confirmation"]["pick"] is None and "seeds" not in res["confirmation"]  # no saved pick yet
    assert res["confirmation"]["others"] == ["dpo+lsam(1e-1)", "dpo+lsam(1e-2)"]
    (claim,) = [x for x in res["claims"] if "fresh seeds" in x["claim"]]
    assert claim["evidence"].startswith("confirmation runs of dpo+lsam(1e-1), dpo+lsam(1e-2) exist but no saved pick")
    _write(tmp_path / "confirm.json", PICK | {"label": "dpo+lsam(1e-1)", "rho": 0.1})
    res = analyse(out)
    for k in ("configs", "paired", "rho_sweep_adjusted", "matched_movement", "rho_best"):
        assert res[k] == before[k], k
    assert before["confirmation"] == {"pick": None, "planned_seeds": [5, 6, 7], "not_fresh": [], "runs_done": 0,
                                      "others": []}  # fmt: skip
    c = res["confirmation"]
    assert c["label"] == "dpo+lsam(1e-1)" and c["others"] == ["dpo+lsam(1e-2)"] and c["not_fresh"] == [2]
    assert c["against"] == "dpo" and c["seeds"] == [5, 6, 7] and c["level"] == 0.95 and c["runs_done"] == 6
    assert_matches_ref(c["win_vs_sft_diff"], [[x - 0.5 for x in gain[s]] for s in (5, 6, 7)], clip=(-1.0, 1.0))
    assert c["rows"]["dpo"]["seeds"] == [5, 6, 7] and set(c["rows"]) == {"dpo", "dpo+lsam(1e-1)"}
    (claim,) = [x for x in res["claims"] if "fresh seeds" in x["claim"]]
    assert claim["evidence"].startswith("win rate against SFT, ρ=0.1 on fresh seeds 5, 6, 7")
    from logitsam.experiments.study.study_report import write_study_report

    write_study_report(out)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| dpo (confirmation, fresh seeds) | 3 |" in md
    assert "| dpo+lsam(1e-1) (confirmation, fresh seeds) | 3 |" in md and "vs dpo (3 seeds) |" in md
    assert md.splitlines()[2].startswith("**Status: 14 of 51 planned runs finished**")  # 8 + 6 confirmation


@pytest.mark.slow
def test_confirmation_without_a_common_seed_and_part_done(tmp_path):
    """An interrupted confirmation (DPO on seed 5, the pick only on seed 6) reports its runs, no crash."""
    from logitsam.experiments.study.study_report import write_study_report

    out = build_study(tmp_path)
    _write(tmp_path / "confirm.json", PICK | {"label": "dpo+lsam(1e-1)", "rho": 0.1})
    _write(tmp_path / "runs" / "confirm_dpo_s5" / "record.json", _confirm_record("dpo", 5, 2, [0.5] * 6))
    res = analyse(out)
    assert res["confirmation"]["runs_done"] == 1 and "seeds" not in res["confirmation"]
    _write(tmp_path / "runs" / "confirm_dpo+lsam(1e-1)_s6" / "record.json",
           _confirm_record("dpo+lsam(1e-1)", 6, 3, [1.0] * 6))  # fmt: skip
    write_study_report(out)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "the confirmation (2 of 6 runs)" in md.splitlines()[2]
    assert "| dpo+lsam(1e-1) (confirmation, fresh seeds) | 1 |" in md
    res = _strict_json(tmp_path / "results.json")
    (claim,) = [x for x in res["claims"] if "fresh seeds" in x["claim"]]
    assert claim["verdict"] == "not measured" and "2 of 6 runs" in claim["evidence"]
