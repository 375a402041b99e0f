"""`logitsam study` end to end on the tiny random model: plan, records, resume, refusals, report."""

import json
import os

import pytest

from logitsam import cli
from logitsam.errors import UserError
from logitsam.study.plan import GROUPS, StudySettings, quick_study
from logitsam.study.runner import record_path, run_study


def _quick(groups=("dpo",), seeds=(0, 1)) -> StudySettings:
    s = quick_study()
    s.groups, s.seeds = groups, seeds
    return s


def test_plan_orders_groups_then_seeds_and_covers_the_issue():
    s = StudySettings()
    plan = [spec.name for _, spec in s.plan()]
    assert len(plan) == len(set(plan)) == 3 * sum(len(g) for g in GROUPS.values())
    assert plan[:6] == ["dpo/s2", "dpo+lsam(1e-1)/s2", "dpo/s3", "dpo+lsam(1e-1)/s3", "dpo/s4", "dpo+lsam(1e-1)/s4"]
    labels = {c.label for g in GROUPS.values() for c in g}
    for need in ("slic", "slic+lsam(1e0)", "cpo", "cpo+lsam(1e-1)", "gate_dpo", "dpo+fullsam(1e-2)", "dpo(lr×0.5)"):
        assert need in labels
    rhos = sorted(c.rho for g in GROUPS.values() for c in g if c.loss == "dpo" and c.mode == "logits" and c.rho > 0)
    assert rhos[0] * 1e3 <= rhos[-1]  # at least four decades (1e-3 .. 1)
    assert 0 not in s.seeds and 1 not in s.seeds  # the demo tuned ρ on seed 0 (and ran seed 1)
    # every SAM configuration names its plain partner, which is planned too
    for g in GROUPS.values():
        for c in g:
            assert c.plain is None or c.plain in labels


def test_quick_study_records_resumes_and_reports(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LOGITSAM_CACHE", str(tmp_path / "cache"))
    out = str(tmp_path / "study")
    recs = run_study(out, _quick(groups=("dpo", "dpo-small-step")))
    assert set(recs) == {f"{lb}/s{s}" for lb in ("dpo", "dpo+lsam(1e-1)", "dpo(lr×0.5)") for s in (0, 1)}
    shared = json.loads((tmp_path / "study" / "shared.json").read_text())
    n = len(shared["prompts"])
    assert n > len(shared["chosen_prompts"]) > 0  # extra held-out prompts beyond the pairs' prompts
    for name, rec in recs.items():
        assert len(rec["samples"]) == len(rec["rewards"]) == len(rec["outcomes_vs_sft"]) == len(rec["kl_values"]) == n
        assert len(rec["outcomes_vs_chosen"]) == len(shared["chosen_prompts"])
        assert ("hessian" in rec) == name.startswith(("dpo/", "dpo+lsam"))
        starts = [r for r in rec["log"] if r["step"] == 0 and "eval_loss" in r]
        assert len(starts) == 1  # the shared step-0 evaluation, once
    # the small-step control really trained with half the learning rate
    cfg = (tmp_path / "study" / "runs" / "dpo(lr×0.5)_s0" / "config.yaml").read_text()
    assert "learning_rate: 0.0005" in cfg
    res = json.loads((tmp_path / "study" / "results.json").read_text())
    assert res["paired"]["dpo+lsam(1e-1)"]["against"] == "dpo" and res["paired"]["dpo+lsam(1e-1)"]["seeds"] == [0, 1]
    assert {c["claim"].split(" (")[0] for c in res["claims"]} >= {
        "logits-SAM reduces the squeezing of held-out chosen responses in DPO"
    }
    report = (tmp_path / "study" / "report.md").read_text()
    assert "## Claims" in report and "| dpo+lsam(1e-1) | 2 |" in report and "Tuning:" in report
    assert (tmp_path / "study" / "drift_curves.png").stat().st_size > 5000
    capsys.readouterr()

    # resumable: finished runs are not run again (records untouched), a new seed runs alone
    mtime = os.path.getmtime(record_path(out, "dpo/s0"))
    run_study(out, _quick(groups=("dpo",), seeds=(0, 1, 2)), report=False)
    printed = capsys.readouterr().out
    assert "4 already finished" in printed and "dpo/s2" in printed and "dpo/s0:" not in printed
    assert os.path.getmtime(record_path(out, "dpo/s0")) == mtime

    # other settings in the same directory are refused, naming the file
    changed = _quick()
    changed.learning_rate = 2e-3
    with pytest.raises(UserError, match=r"shared\.json: made with other study settings"):
        run_study(out, changed)


def test_study_cli_plan_and_bad_options(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LOGITSAM_CACHE", str(tmp_path / "cache"))
    assert cli.main(["study", "--plan", "--out", str(tmp_path / "s"), "--seeds", "7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "todo  dpo/s7" and all(line.startswith("todo  ") for line in lines)
    for argv, msg in (
        (["--groups", "dpo,nope"], "--groups: unknown nope"),
        (["--seeds", "1,x"], "--seeds: comma-separated integers"),
        (["--seeds", "1,1"], "--seeds: repeated seed"),
        (["--seeds", "-1"], "--seeds: must be in"),
        (["--device", "tpu"], "--device: one of auto, cpu, cuda"),
    ):
        assert cli.main(["study", "--plan", *argv]) != 0
        assert msg in capsys.readouterr().err, argv
