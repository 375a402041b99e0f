"""``make demo``: the displacement slice's pipeline on the tiny model (seconds; its numbers mean nothing)."""

import dataclasses
import json
from pathlib import Path

import pytest

from experiments.displacement import demo as D
from experiments.displacement import pairs as P
from experiments.displacement.demo import main as demo_main
from experiments.displacement.pilot import GRID


def test_shipped_swap_pairs_are_the_pilot_picks_first_pairs_with_edits_and_controls():
    """The demo trains on the head of the pilot's pick (same model, prompts and sampling seed), each pair one
    swapped word apart, every shipped training pair with its two control texts."""
    train = [json.loads(x) for x in Path(D.shipped("demo_swap_train.jsonl")).read_text(encoding="utf-8").splitlines()]
    held = [json.loads(x) for x in Path(D.shipped("demo_swap_heldout.jsonl")).read_text(encoding="utf-8").splitlines()]
    assert len(train) >= D.SETTING.n_train and len(held) >= D.demo_shared().n_heldout_pairs
    pick = next(s for s in GRID if s.name == "swap-128x3-lr1e-4")
    assert (D.SETTING.lr, D.SETTING.beta, D.SETTING.batch_size) == (pick.lr, pick.beta, pick.batch_size)
    for p in train + held:
        edited = p[p["edited"]]
        other = p["rejected" if p["edited"] == "chosen" else "chosen"]
        assert edited != other and p["score_chosen"] > p["score_rejected"]
        assert (
            edited
            == other[: p["edit"]["char"]]
            + p["edit"]["replacement"]
            + other[p["edit"]["char"] + len(p["edit"]["word"]) :]
        )
    assert all(len(p["controls"]) == 2 for p in train)
    assert [a.label for a in D.ARMS] == ["dpo", "dpo+lsam(1e-1)", "dpop"]


@pytest.mark.slow
def test_demo_quick_runs_the_displacement_pipeline_on_shipped_pairs(tmp_path, monkeypatch):
    """Shipped pairs (never sampled), the three arms, probes of trained pairs and control text along training,
    a report naming what it is; a second call trains nothing; a directory of other sizes starts again."""
    from logitsam.training import run as run_mod

    def never(*args, **kwargs):
        raise AssertionError("the demo's pairs ship with the package; the reference is the policy at step 0")

    monkeypatch.setattr(run_mod, "load_reference", never)
    monkeypatch.setattr(P, "generate", never)
    printed: list[str] = []
    out = tmp_path / "demo"
    path = D.run_demo(str(out), quick=True, log=printed.append)
    assert printed[0].startswith("demo (quick: tiny random model, letters reward)")
    s, sh = D.QUICK_SETTING, D.demo_shared(quick=True)
    train_rows = [json.loads(x) for x in (out / "data" / s.name / "train.jsonl").read_text().splitlines()]
    shipped = Path(D.shipped("demo_swap_train.jsonl")).read_text(encoding="utf-8").splitlines()[: s.n_train]
    assert [r["chosen"] for r in train_rows] == [json.loads(x)["chosen"] for x in shipped]
    steps = (s.n_train // s.batch_size) * s.epochs
    for arm in D.ARMS:
        rec = json.loads((out / "runs" / s.name / f"{arm.label}_s{D.SEED}" / "record.json").read_text())
        assert sorted(int(k) for k in rec["probes"]) == sorted({max(1, round(f * steps)) for f in D.PROBES})
        final = rec["probes"][str(int(steps))]
        assert len(final["train"]["logp"]) == len(final["control"]["logp"]) == sh.n_train_probe
        assert len(rec["outcomes_vs_sft"]) == len(rec["kl_values"]) == sh.n_win_prompts
        assert any("sam/grad_norm" in r for r in rec["log"]) == (arm.rho > 0)
        assert rec["arm"]["loss"] == arm.loss
    report = Path(path).read_text(encoding="utf-8")
    assert "Pipeline check on a tiny random model" in report and D.MAIN_REPORT in report
    assert all(f"| {a.label} | " in report for a in D.ARMS) and "control drift" in report
    assert (out / f"drift_{s.name}.png").stat().st_size > 5000

    monkeypatch.setattr("experiments.runs.train", never)
    assert D.run_demo(str(out), quick=True, log=printed.append) == path  # finished runs are kept
    smaller = dataclasses.replace(sh, n_win_prompts=sh.n_win_prompts - 1)
    monkeypatch.setattr(D, "demo_shared", lambda *a, **k: smaller)
    with pytest.raises(AssertionError, match="ship with the package"):  # i.e. it trains again
        D.run_demo(str(out), quick=True, log=printed.append)
    assert printed[-1].endswith("made by an older demo with other settings; starting again")


def test_demo_full_is_gone(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        demo_main(["--full", "--out", str(tmp_path / "d")])
    assert e.value.code == 2 and "unrecognized arguments: --full" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_demo_help_says_what_quick_uses(capsys):
    with pytest.raises(SystemExit):
        demo_main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "tiny random model, letters-fraction reward (not VADER)" in out


def test_demo_refuses_an_unwritable_out_in_one_line(capsys):
    assert demo_main(["--quick", "--out", "/proc/logitsam_demo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("demo: error: --out: cannot write into '/proc/logitsam_demo'"), err
