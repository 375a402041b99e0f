"""The study's paired comparisons (two configurations cell by cell) and the matched-movement control,
against values worked out by hand from linear trajectories."""

import json
import math

import pytest

from experiments.study import analysis
from experiments.study.analysis import paired
from stats_reference import NAN, assert_estimate, assert_matches_ref, ref_crossed, t_interval, with_probe_error

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
