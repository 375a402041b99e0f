"""The study's analysis on a synthetic study directory whose answers are derived by hand (no model is
trained; tests/synthetic_study.py): analyse(), its configuration rows, paired comparisons, the
matched-movement control and the claims on real-shaped records.
"""

import json
import math

import pytest

from experiments.study import analysis
from experiments.study.plan import TUNING_NOTE
from experiments.study.summary import analyse
from stats_reference import CLAIMS, T2, assert_estimate, assert_matches_ref, ref_t, t_interval, with_probe_error
from synthetic_study import HESSIAN, KL, KL_SHAPE, SEEDS, STEPS, build_study, study_record, trajectory_of, write_json


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    out = build_study(root)
    # records of other study settings: sorted after the real ones (would overwrite seed 2) and a new seed
    write_json(root / "runs" / "zz_stale_dpo_s2" / "record.json", study_record("dpo", 2, key="old", reward_shift=100.0))
    write_json(
        root / "runs" / "zz_stale_dpo_s9" / "record.json", study_record("dpo", 2, key="old") | {"spec": {"seed": 9}}
    )
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
    write_json(path, rec)
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
        rec = study_record("dpo+lsam(1e-1)", s, reward_shift=-0.05, outcomes_vs_sft=[0.0] * 6)
        for r in rec["log"]:
            if "eval_loss" in r:
                r["eval_logps/chosen_drift"] = 2 * trajectory_of("dpo", s)[0][STEPS.index(r["step"])] - 0.1 * s
        write_json(tmp_path / "runs" / f"dpo+lsam(1e-1)_s{s}" / "record.json", rec)
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
    rec = study_record("dpo", 3)
    steps, vals = analysis.trajectory(rec, "eval_logps/chosen_drift")
    assert steps == list(STEPS)
    assert vals == pytest.approx([0.0, -0.6, -1.2, -1.8, -2.4])
    assert analysis.final(rec, "eval_logps/rejected_drift") == pytest.approx(-4.8)
    assert math.isnan(analysis.final({"log": [{"step": 1, "loss": 0.5}]}, "eval_logps/chosen_drift"))
