"""The displacement setting (issue 30): swap edits, swap pairs with control text, per-region probes, the
gate and the pilot's pick rule — against hand values and token-by-token computations; the pipeline end to
end on the tiny random model (a check that it runs, not a result)."""

import math
import random

import pytest
import torch

from experiments.displacement import gate as D
from experiments.displacement import pairs as P
from experiments.displacement.edits import OPPOSITES, swap_one, swappable
from experiments.displacement.pilot import GRID, choose, cost
from experiments.displacement.plan import DPOP, FRONTIER, ORDER, plan
from experiments.squeeze.experiment import Setting
from experiments.squeeze.probe import REGIONS, response_stats, split_regions
from logitsam.config import ModelConfig
from logitsam.models import load_tokenizer, tiny_model


def test_opposites_are_symmetric_and_swap_keeps_case_and_the_rest_of_the_text():
    assert all(OPPOSITES[OPPOSITES[w]] == w for w in OPPOSITES)
    text = "We had a Great time and the food was good, really."
    assert [m.group() for m in swappable(text)] == ["Great", "good"]
    edited, edit = swap_one(text, random.Random(1))
    assert edited in (
        "We had a Terrible time and the food was good, really.",
        "We had a Great time and the food was bad, really.",
    )
    assert text[: edit["char"]] == edited[: edit["char"]]
    # the first two words and the last word are never edited (a shared prefix and suffix around the edit)
    assert swappable("Good food, great") == [] and swap_one("Love it so", random.Random(0)) is None
    assert swap_one("The room was GOOD overall", random.Random(0))[0] == "The room was BAD overall"
    assert swappable("goodness is not a word here") == []  # whole words only


def test_split_regions_by_hand():
    assert split_regions([1, 2, 3, 4, 5], [1, 2, 9, 4, 5]) == (2, 2, 5, 5)
    assert split_regions([1, 2, 3, 4], [1, 2, 7, 8, 4]) == (2, 1, 4, 5)  # different lengths
    assert split_regions([1, 2], [1, 2]) == (2, 0, 2, 2)  # identical: all prefix
    assert split_regions([1, 2, 3], [1, 2]) == (2, 0, 3, 2)  # one a prefix of the other: no shared suffix
    assert split_regions([5, 6], [7, 6]) == (0, 1, 2, 2)


@pytest.mark.slow
def test_region_log_probs_add_up_and_match_a_token_by_token_computation():
    tok = load_tokenizer(ModelConfig(name_or_path="tiny-random"))
    model = tiny_model(len(tok)).double()
    rows = [
        {"prompt_ids": [5, 6, 7], "chosen_ids": [10, 11, 12, 13, 14], "rejected_ids": [10, 11, 40, 13, 14]},
        {"prompt_ids": [8, 9], "chosen_ids": [20, 21, 22], "rejected_ids": [20, 50, 51, 22]},
    ]
    st = response_stats(model, rows, tok.pad_token_id, batch_pairs=2)
    for i, r in enumerate(rows):
        p, q, _, _ = split_regions(r["chosen_ids"], r["rejected_ids"])
        for side, resp in ((0, r["chosen_ids"]), (1, r["rejected_ids"])):
            ids = torch.tensor([r["prompt_ids"] + resp])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            lp = [float(logp[len(r["prompt_ids"]) - 1 + t, resp[t]]) for t in range(len(resp))]
            want = [sum(lp[:p]), sum(lp[p : len(lp) - q]), sum(lp[len(lp) - q :])]
            got = [st[k][i][side] for k in REGIONS]
            assert got == pytest.approx(want, abs=1e-9)
            assert sum(got) == pytest.approx(st["logp"][i][side], abs=1e-9)


def _fake_generate(texts):
    calls = []

    def gen(model, tok, prompts, dec, batch_size, seed, desc):
        calls.append((list(prompts), seed))
        return [texts(p, seed, i) for i, p in enumerate(prompts)]

    return gen, calls


def test_swap_pairs_order_by_the_judge_carry_controls_and_stop_sampling_once_enough(tmp_path, monkeypatch):
    def texts(prompt, seed, i):
        if seed >= 10**6:
            return f"control {seed} {i}"
        n = int(prompt.split()[-1])
        return ["I think the movie was great and fun", "I think it was bad overall today", "no sentiment here at all"][
            n % 3
        ]

    gen, calls = _fake_generate(texts)
    monkeypatch.setattr(P, "generate", gen)
    score = {"great": 1.0, "terrible": -1.0, "bad": -1.0, "good": 1.0, "fun": 0.5, "boring": -0.5}
    reward = lambda prompt, r: sum(score.get(w.strip(",."), 0.0) for w in r.split())  # noqa: E731
    prompts = [f"prompt {i}" for i in range(200)]
    kw = dict(model_id="m", new_tokens=8, cache=str(tmp_path), n_pairs=5, n_controls=2)
    out = P.swap_pairs(None, None, prompts, reward, **kw)
    assert len(out) == 5 and [c[0][:2] for c in calls] == [prompts[:2], ["prompt 0", "prompt 0"]]  # one chunk
    for p in out:
        assert p["score_chosen"] > p["score_rejected"] and reward("", p["chosen"]) == p["score_chosen"]
        base_kept = p["edited"] == "rejected"
        assert (p["chosen"] if base_kept else p["rejected"]) in (
            "I think the movie was great and fun",
            "I think it was bad overall today",
        )
    assert [len(p["controls"]) for p in out] == [2, 2, 0, 0, 0]
    assert out[0]["controls"] == ["control 1000000 0", "control 1000000 1"]
    assert [p["prompt"] for p in out] == [
        "prompt 0",
        "prompt 1",
        "prompt 3",
        "prompt 4",
        "prompt 6",
    ]  # no-word prompts skipped
    assert P.control_rows(out[:2])[1] == {
        "prompt": "prompt 1",
        "chosen": out[1]["controls"][0],
        "rejected": out[1]["controls"][1],
    }
    assert set(P.training_rows(out)[0]) == {"prompt", "chosen", "rejected", "score_chosen", "score_rejected"}
    # cached: read back without sampling
    monkeypatch.setattr(P, "generate", lambda *a, **k: pytest.fail("sampled again"))
    assert P.swap_pairs(None, None, prompts, reward, **kw) == out
    # prompts that run out say how many pairs they gave
    monkeypatch.setattr(P, "generate", gen)
    with pytest.raises(ValueError, match="6 prompts gave 4 swap pairs; 5 needed"):
        P.swap_pairs(None, None, prompts[:6], reward, **{**kw, "cache": str(tmp_path / "b")})


def _stats(logp):
    n = len(logp)
    regions = {f"logp_{k}": [[x[0] / 3, x[1] / 3] for x in logp] for k in ("prefix", "differ", "suffix")}
    return {"logp": logp, "tokens": [[10, 10]] * n, "top": [[0.3, 0.3]] * n, "entropy": [[3.0, 3.0]] * n, **regions}


def _record(train_dplus, control, win, n=9):
    jit = [0.2 * (i % 3 - 1) for i in range(n)]
    start = {"stats": {k: _stats([[-20.0, -21.0]] * n) for k in ("train", "control", "heldout")}}
    final = {
        "train": _stats([[-20.0 + train_dplus + j, -60.0] for j in jit]),
        "control": _stats([[-20.0 + control + j, -21.0 + control - j] for j in jit]),
        "heldout": _stats([[-22.0 + j, -25.0] for j in jit]),
    }
    return {"probes": {"9": final, "3": start["stats"]}, "outcomes_vs_sft": win, "kl_values": [2.0, 4.0]}, start


def test_displacement_measures_and_gate_on_hand_made_records():
    win = [1.0] * 18 + [0.0] * 2
    m = D.measures(*_record(-5.0, -8.0, win))
    assert m["train_dplus"]["mean"] == pytest.approx(-5.0) and m["train_dminus"]["mean"] == pytest.approx(-39.0)
    assert m["train_margin"]["mean"] == pytest.approx(34.0) and m["train_share_falling"] == 1.0
    assert m["control_drift"]["mean"] == pytest.approx(-8.0) and m["dplus_minus_control"]["mean"] == pytest.approx(3.0)
    assert m["train_dplus_differ"]["mean"] == pytest.approx(-5.0 / 3) and m["kl"] == pytest.approx(3.0)
    assert m["heldout_dplus"]["mean"] == pytest.approx(-2.0)
    assert D.gate(m) == {"train_chosen_falls": True, "dpo_beats_sft": True, "passed": True} and D.shortfall(m) == ""
    m = D.measures(*_record(+1.0, -8.0, win))
    assert D.gate(m)["passed"] is False and D.shortfall(m).startswith("training Δ+ +1.00 [")
    m = D.measures(*_record(-5.0, -8.0, [1.0, 0.0] * 5))  # 50%: not clearly better than SFT
    assert D.gate(m) == {"train_chosen_falls": True, "dpo_beats_sft": False, "passed": False}
    assert "DPO vs SFT 50.0 [" in D.shortfall(m)


def test_pilot_pick_rule_and_main_plan():
    row = lambda name, ok, dplus: {  # noqa: E731
        "setting": next(s for s in GRID if s.name == name).__dict__,
        "gate": {"passed": ok},
        "measures": {"train_dplus": {"mean": dplus}},
    }
    assert choose([]) is None and choose([row("swap-128x3", False, -9.0)]) is None  # none met: no pick
    rows = [row("swap-256x2", True, -30.0), row("swap-128x3", True, -3.0), row("swap-128x3-lr1e-4", True, -20.0)]
    assert cost(Setting("a", n_train=256, epochs=2)) > cost(Setting("b", n_train=128, epochs=3))
    assert choose(rows)["setting"]["name"] == "swap-128x3-lr1e-4"  # cheapest; equal cost: the larger fall
    p = plan()
    # the headline pair on seeds 1–3 first, then the next block; every arm on seeds 1–3 before 4–5
    assert [(a.label, s) for a, s in p[:7]] == [(lab, s) for s in (1, 2, 3) for lab in ("dpo", "dpo+lsam(1e-1)")] + [
        ("dpop", 1)
    ]
    assert {(a.label, s) for a, s in p[: 3 * len(ORDER)]} == {(a.label, s) for a in ORDER for s in (1, 2, 3)}
    assert len(p) == 5 * len(ORDER) and len(set(p)) == len(p)
    assert dict(DPOP.params) == {"lam": 50.0} and [a.lr_scale for a in FRONTIER] == [0.25, 0.5, 1.0]


@pytest.mark.slow
def test_displacement_experiment_end_to_end_on_the_tiny_model(tmp_path, monkeypatch):
    from experiments.displacement import experiment as X
    from experiments.displacement.pilot import DPO

    words = ["I found it great and nice here", "it was bad and the place dirty too", "plain words only"]
    gen, _ = _fake_generate(lambda p, seed, i: words[(i + seed) % 3] if seed < 10**6 else f"other text {i}")
    monkeypatch.setattr(P, "generate", gen)
    monkeypatch.setattr(X, "TRAIN_PAIRS", 8)
    monkeypatch.setattr(X, "CONTROLS", 3)
    monkeypatch.setenv("LOGITSAM_CACHE", str(tmp_path / "cache"))
    sh = X.displacement_shared(model="tiny-random", reward="vader", n_heldout_pairs=3, n_train_probe=3, n_win_prompts=4)
    exp = X.DisplacementExperiment(str(tmp_path / "exp"), sh)
    s = Setting("tiny", pairs="swap", n_train=8, new_tokens=6, batch_size=4, lr=1e-3, epochs=1)
    rec = exp.run(s, DPO, 0)
    start = exp.start(s)
    assert set(start["stats"]) == {"train", "heldout", "control"}
    assert len(start["stats"]["control"]["logp"]) == 3 and set(REGIONS) <= set(start["stats"]["train"])
    m = D.measures(rec, start)
    assert m["train_dplus"]["n"] == 3 and all(
        math.isfinite(m[k]["mean"]) for k in ("control_drift", "train_dplus_suffix")
    )
    with pytest.raises(ValueError, match="n_train ≤ 8"):
        exp.swap(Setting("big", pairs="swap", n_train=9))


def test_frontier_interpolates_in_kl_and_refuses_outside_it():
    from experiments.displacement.analysis import frontier_at

    pts = [(4.0, -10.0), (1.0, 2.0), (2.0, -2.0)]  # unsorted on purpose
    assert frontier_at(pts, 3.0) == pytest.approx(-6.0)
    assert frontier_at(pts, 1.5) == pytest.approx(0.0) and frontier_at(pts, 4.0) == pytest.approx(-10.0)
    assert math.isnan(frontier_at(pts, 5.0)) and math.isnan(frontier_at(pts, 0.5))


def _write_main(tmp_path, shift, n_prompts=30, pairs=9):
    """Synthetic main comparison, seeds 1–3: DPO at lr × 0.25 / 0.5 / 1 on a frontier Δ+ = 4 − 3·KL (seed noise
    up to ±2 nats, the same for every arm of a seed), and a logits-SAM arm at KL 2.5 whose Δ+ sits ``shift``
    nats above the frontier."""
    from experiments.records import write_json, write_record

    out, setting = tmp_path / "main", "toy"
    flat = [[-20.0, -21.0]] * pairs
    write_json(
        str(out / "shared" / f"{setting}.json"), {"stats": {k: _stats(flat) for k in ("train", "control", "heldout")}}
    )
    arms = (("dpo(lr×0.25)", 0.0, 1.0), ("dpo(lr×0.5)", 0.0, 2.0), ("dpo", 0.0, 3.0), ("dpo+lsam(1e-1)", 0.1, 2.5))
    for seed, noise in ((1, -2.0), (2, 0.0), (3, 2.0)):
        for label, rho, kl in arms:
            dplus = 4 - 3 * kl + noise + (shift + 0.01 * seed if rho else 0.0)
            final = {
                k: _stats([[-20.0 + dplus + 0.1 * (j % 3 - 1), -50.0] for j in range(pairs)])
                for k in ("train", "heldout")
            }
            final["control"] = _stats([[-25.0, -26.0]] * pairs)
            outcomes = [float((seed + i) % 2) for i in range(n_prompts)]
            rec = {"arm": {"label": label, "rho": rho, "mode": "logits"}, "seed": seed, "outcomes_vs_sft": outcomes,
                   "rewards": outcomes, "samples": [f"{label}{i}" for i in range(n_prompts)],
                   "kl_values": [kl] * n_prompts, "probes": {"4": final, "2": {k: _stats(flat) for k in final}},
                   "log": [{"step": 1, "loss": 0.6}] + ([{"sam/grad_norm": 5.0, "sam/loss_pre": 0.5, "sam/loss_post": 0.6}] if rho else [])}  # fmt: skip
            write_record(str(out / "runs" / setting / f"{label}_s{seed}" / "record.json"), rec)
    return str(out), setting


def test_main_analysis_compares_at_matched_kl_and_recomputes_from_records(tmp_path):
    from experiments.displacement.analysis import analyse
    from experiments.displacement.report import write_report

    out, setting = _write_main(tmp_path, shift=3.0)
    res = analyse(out, setting)
    p = res["paired"]["dpo+lsam(1e-1)"]
    # at matched steps the arm moved less (KL 2.5 < 3): +1.5 nats of it is moving less, +3 is the effect
    assert p["train_dplus_diff"]["mean"] == pytest.approx(4.5 + 0.02, abs=1e-9)
    assert p["matched_kl"]["diff"]["mean"] == pytest.approx(3.0 + 0.02, abs=1e-9) and p["matched_kl"]["diff"]["n"] == 3
    assert p["kl_diff"]["mean"] == pytest.approx(-0.5)
    assert res["configs"]["dpo"]["train_dplus"]["mean"] == pytest.approx(-5.0)  # 4 − 9, seed noise averaging 0
    assert res["displacement_effect"] == pytest.approx(2.5)  # half of DPO's 5-nat fall > 2 nats
    claim = res["claims"][0]
    assert claim["verdict"] == "reproduced" and "matched-KL difference +3.0" in claim["evidence"]
    assert "| dpo+lsam(1e-1) | 3 | +4.5" in write_report(out, setting)
    # the same arm on the frontier (no effect beyond moving less): not reproduced at matched KL
    out, setting = _write_main(tmp_path / "b", shift=0.0)
    res = analyse(out, setting)
    assert res["paired"]["dpo+lsam(1e-1)"]["train_dplus_diff"]["mean"] == pytest.approx(1.52, abs=1e-9)
    assert res["claims"][0]["verdict"] == "not reproduced"  # the interval lies short of 2.5 nats
