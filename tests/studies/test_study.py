"""`python -m experiments.study.command` end to end on the tiny random model: plan, records, resume, refusals, report.

The quick study is trained once per module (``finished``); tests that change a study directory work
on a copy of it, so the refusals of stale runs, start files and changed pairs cost no training.
"""

import hashlib
import json
import os
import re
import shutil

import pytest

from experiments.records import write_record
from experiments.study.command import main as study_main
from experiments.study.plan import GROUPS, StudySettings, quick_study
from experiments.study.records import record_path
from experiments.study.runner import run_study
from logitsam.errors import UserError

pytestmark = pytest.mark.slow  # trains or launches processes: `pytest -m 'not slow'` skips it


def _quick(groups=("dpo",), seeds=(0, 1)) -> StudySettings:
    s = quick_study()
    s.groups, s.seeds = groups, seeds
    return s


QUICK_GROUPS = ("dpo", "dpo-small-step")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A quick study (DPO, DPO + logits-SAM and DPO at half the learning rate, seeds 0 and 1), run once:
    (study directory, records by run name, the cache directory its pairs live in)."""
    root = tmp_path_factory.mktemp("quick")
    cache = str(root / "cache")
    out = str(root / "study")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOGITSAM_CACHE", cache)
        recs = run_study(out, _quick(groups=QUICK_GROUPS))
    return out, recs, cache


@pytest.fixture
def study_copy(finished, tmp_path, monkeypatch):
    """A copy of the finished quick study to tamper with (same pairs cache)."""
    out, _, cache = finished
    monkeypatch.setenv("LOGITSAM_CACHE", cache)
    dst = str(tmp_path / "study")
    shutil.copytree(out, dst)
    return dst


def _edit_json(path, change):
    """Change a study file as a genuinely different run would have written it (records keep a valid
    checksum: test_records covers hand edits)."""
    with open(path, encoding="utf-8") as f:
        obj = json.load(f)
    change(obj)
    if "checksum" in obj:
        write_record(path, {k: v for k, v in obj.items() if k != "checksum"})
        return
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)


def _start_file(out):
    """The step-0 evaluation of the DPO loss setup (loss "dpo", no parameters: every run of the quick
    study), named as runner.py names it."""
    setup = hashlib.sha256(json.dumps(["dpo", {}], sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(out, "start", f"{setup}.json")


def test_plan_orders_groups_then_seeds_and_covers_the_issue():
    s = StudySettings()
    plan = [spec.name for _, spec in s.plan()]
    assert len(plan) == len(set(plan)) == 3 * sum(len(g) for g in GROUPS.values())
    assert plan[:6] == ["dpo/s2", "dpo+lsam(1e-1)/s2", "dpo/s3", "dpo+lsam(1e-1)/s3", "dpo/s4", "dpo+lsam(1e-1)/s4"]
    labels = {c.label for g in GROUPS.values() for c in g}
    for need in ("slic", "slic+lsam(1e0)", "cpo", "cpo+lsam(1e-1)", "gate_dpo", "dpo+fullsam(1e-2)", "dpo(lr×0.5)"):
        assert need in labels
    rhos = sorted(c.rho for g in GROUPS.values() for c in g if c.loss == "dpo" and c.mode == "logits" and c.rho > 0)
    assert rhos == [1e-4, 1e-3, 1e-2, 1e-1, 1.0]  # four decades around ρ = 0.1, down to the paper's own 1e-4
    assert 0 not in s.seeds and 1 not in s.seeds  # the demo tuned ρ on seed 0 (and ran seed 1)
    # every configuration trains the loss its label names (a label is not a loss: Config("slic") once ran DPO)
    for g in GROUPS.values():
        for c in g:
            assert c.label.split("+")[0].split("(")[0] == c.loss, c
    # every SAM configuration names its plain partner, which is planned too; the remedies are against DPO
    for g in GROUPS.values():
        for c in g:
            assert c.plain is None or c.plain in labels
    for name in ("gate_dpo", "dpo_abs", "spo_target", "dpo+fullsam(1e-2)", "dpo(lr×0.5)"):
        assert {c.label: c.plain for g in GROUPS.values() for c in g}[name] == "dpo"


def test_quick_study_records_and_reports(finished):
    out, recs, _ = finished
    assert set(recs) == {f"{lb}/s{s}" for lb in ("dpo", "dpo+lsam(1e-1)", "dpo(lr×0.5)") for s in (0, 1)}
    with open(os.path.join(out, "shared.json"), encoding="utf-8") as f:
        shared = json.load(f)
    n = len(shared["prompts"])
    assert n > len(shared["chosen_prompts"]) > 0  # extra held-out prompts beyond the pairs' prompts
    # the preference pairs' hash, so that changed pairs are noticed on resume
    with open(os.path.join(out, "data", "train.jsonl"), encoding="utf-8") as f:
        train = [json.loads(line) for line in f]
    assert isinstance(shared["data"], str) and len(shared["data"]) == 16
    assert shared["pairs"]["train"] == len(train) > 0
    for name, rec in recs.items():
        assert len(rec["samples"]) == len(rec["rewards"]) == len(rec["outcomes_vs_sft"]) == len(rec["kl_values"]) == n
        assert len(rec["outcomes_vs_chosen"]) == len(shared["chosen_prompts"])
        assert ("hessian" in rec) == name.startswith(("dpo/", "dpo+lsam"))
        assert rec["config"]["hessian"] == ("hessian" in rec)  # the plan's flag is recorded with the run
        assert rec["spec"]["name"] == name
        starts = [r for r in rec["log"] if r["step"] == 0 and "eval_loss" in r]
        assert len(starts) == 1  # the shared step-0 evaluation, once
    # one step-0 evaluation file for the one loss setup, tagged with the study's key
    with open(_start_file(out), encoding="utf-8") as f:
        start = json.load(f)
    assert start["key"] == shared["key"] and start["records"]
    # the small-step control really trained with half the learning rate
    with open(os.path.join(out, "runs", "dpo(lr×0.5)_s0", "config.yaml"), encoding="utf-8") as f:
        assert "learning_rate: 0.0005" in f.read()
    with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
        text = f.read()
    res = json.loads(text, parse_constant=lambda c: pytest.fail(f"results.json is not strict JSON: {c}"))
    assert res["paired"]["dpo+lsam(1e-1)"]["against"] == "dpo" and res["paired"]["dpo+lsam(1e-1)"]["seeds"] == [0, 1]
    assert len(res["claims"]) == 9
    assert {c["claim"].split(" (")[0] for c in res["claims"]} >= {
        "logits-SAM reduces the squeezing of held-out chosen responses in DPO"
    }
    with open(os.path.join(out, "report.md"), encoding="utf-8") as f:
        report = f.read()
    assert "## Claims" in report and "| dpo+lsam(1e-1) | 2 |" in report and "Tuning:" in report
    assert "**Status: 6 of 6 planned runs finished**." in report  # the quick study's own groups only
    assert "Tuning: none (a pipeline check)" in report and "| mean letters reward |" in report
    assert os.path.getsize(os.path.join(out, "drift_curves.png")) > 5000


def test_quick_study_resumes(finished, study_copy, capsys):
    # resumable: finished runs are not run again (records untouched), a new seed runs alone
    out = study_copy
    mtime = os.path.getmtime(record_path(out, "dpo/s0"))
    run_study(out, _quick(groups=("dpo",), seeds=(0, 1, 2)), report=False)
    printed = capsys.readouterr().out
    assert "4 already finished" in printed and "dpo/s2" in printed and "dpo/s0:" not in printed
    assert os.path.getmtime(record_path(out, "dpo/s0")) == mtime
    assert os.path.exists(record_path(out, "dpo+lsam(1e-1)/s2"))

    # other settings in the same directory are refused, naming the file
    changed = _quick()
    changed.learning_rate = 2e-3
    with pytest.raises(UserError, match=r"shared\.json: made with other study settings"):
        run_study(out, changed)


def test_resume_with_unchanged_files_trains_nothing(study_copy, capsys):
    run_study(study_copy, _quick(groups=QUICK_GROUPS), report=False)
    assert "6 runs planned, 6 already finished" in capsys.readouterr().out


def test_a_finished_run_of_other_settings_is_refused(study_copy):
    _edit_json(record_path(study_copy, "dpo/s1"), lambda r: r.update(key="0123456789abcdef"))
    with pytest.raises(UserError, match=r"dpo_s1.record\.json: finished under other study settings"):
        run_study(study_copy, _quick(groups=QUICK_GROUPS), report=False)


@pytest.mark.parametrize(
    ("name", "change"),
    [
        # another ρ than the plan's (plan.py changed since the run finished)
        ("dpo+lsam(1e-1)/s0", lambda r: r["spec"].update(rho=0.01)),
        # another learning-rate scale
        ("dpo(lr×0.5)/s1", lambda r: r["spec"].update(lr_scale=1.0)),
        # the plan now asks for Hessian traces the record does not have
        ("dpo/s0", lambda r: r["config"].update(hessian=False)),
        # a record from before the plan's flag was recorded
        ("dpo/s1", lambda r: r.pop("config")),
    ],
    ids=["other rho", "other lr scale", "other hessian flag", "no config"],
)
def test_a_finished_run_that_is_not_the_plans_is_refused(study_copy, name, change):
    _edit_json(record_path(study_copy, name), change)
    fname = name.replace("/", "_")
    msg = rf"{re.escape(fname)}.record\.json: a different run than the plan's {re.escape(name)}; delete it"
    with pytest.raises(UserError, match=msg):
        run_study(study_copy, _quick(groups=QUICK_GROUPS), report=False)


@pytest.mark.parametrize(
    "change",
    [lambda s: s.update(key="0123456789abcdef"), lambda s: s.update(records=[]), lambda s: s.pop("records")],
    ids=["other key", "no records", "records missing"],
)
def test_a_start_file_of_another_study_is_refused(study_copy, change):
    # the step-0 file is read when a run has to be trained: remove one finished run
    os.remove(record_path(study_copy, "dpo+lsam(1e-1)/s1"))
    _edit_json(_start_file(study_copy), change)
    with pytest.raises(UserError, match=r"start.[0-9a-f]{12}\.json: not this study's step-0 evaluation"):
        run_study(study_copy, _quick(groups=QUICK_GROUPS), report=False)
    assert not os.path.exists(record_path(study_copy, "dpo+lsam(1e-1)/s1"))  # refused before training


def test_changed_preference_pairs_are_refused(study_copy):
    _edit_json(os.path.join(study_copy, "shared.json"), lambda s: s.update(data="0123456789abcdef"))
    with pytest.raises(UserError, match=r"shared\.json: the study's preference pairs changed since it started"):
        run_study(study_copy, _quick(groups=QUICK_GROUPS), report=False)


def test_a_shared_file_without_the_pairs_hash_is_accepted(study_copy, capsys):
    # studies started before the hash was stored resume as before
    _edit_json(os.path.join(study_copy, "shared.json"), lambda s: s.pop("data"))
    run_study(study_copy, _quick(groups=QUICK_GROUPS), report=False)
    assert "6 already finished" in capsys.readouterr().out


def test_study_cli_plan_and_bad_options(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LOGITSAM_CACHE", str(tmp_path / "cache"))
    assert study_main(["--plan", "--out", str(tmp_path / "s"), "--seeds", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "todo    dpo/s8" and all(line.startswith("todo    ") for line in lines[:-1])
    assert lines[-1] == "later   confirm/dpo and dpo+lsam(best ρ) on seeds 5,6,7: after the ρ sweep"
    for argv, msg in (
        (["--groups", "dpo,nope"], "--groups: unknown 'nope'"),
        (["--groups", "dpo,"], "--groups: empty item"),
        (["--groups", ""], "--groups: empty item"),
        (["--groups", "dpo,dpo"], "--groups: repeated item"),
        (["--seeds", "1,x"], "--seeds: comma-separated integers"),
        (["--seeds", "1,,2"], "--seeds: empty item"),
        (["--seeds", ""], "--seeds: empty item"),
        (["--seeds", "1,1"], "--seeds: repeated item"),
        (["--seeds", "-1"], "--seeds: must be in"),
        (["--device", "tpu"], "--device: one of auto, cpu, cuda"),
        (["--seeds", "2,5"], "--seeds / --confirm-seeds: seed 5 is in both"),
        (["--confirm-seeds", "4,9"], "--seeds / --confirm-seeds: seed 4 is in both"),
        (["--report-only", "--confirm-seeds", "2,9"], "--report-only reports what DIR holds"),
        (["--confirm-seeds", "x"], "--confirm-seeds: comma-separated integers"),
        (["--report-only", "--quick"], "--report-only reports what DIR"),
    ):
        plan = [] if "--report-only" in argv else ["--plan"]
        assert study_main([*plan, *argv]) != 0
        assert msg in capsys.readouterr().err, argv
    # --report-only on a directory that is not a study: one line, nothing created
    for target in (tmp_path / "none", tmp_path):
        assert study_main(["--report-only", "--out", str(target)]) == 2
        assert "not a study directory (no shared.json)" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_confirmation_reruns_the_sweeps_pick_on_fresh_seeds(study_copy, monkeypatch, capsys):
    """Once the sweep is finished, its pick (the rule of analysis.best_of_sweep, saved in confirm.json) and
    DPO run on the confirmation seeds under their own names, flagged in the record and kept apart from the
    plan's rows; the saved pick stands on resume; a seed the plan trained on is not fresh."""
    from experiments.study import analysis, summary
    from experiments.study.command import plan_lines
    from experiments.study.confirm import confirmation_plan, read_pick
    from experiments.study.plan import _lsam

    monkeypatch.setitem(GROUPS, "rho", [_lsam("dpo", 1e-2)])  # a two-point sweep: 1e-1 (done) and 1e-2
    s = _quick(groups=("dpo", "rho", "confirm"))
    s.confirm_seeds = (5,)
    plan, why = confirmation_plan(study_copy, s)
    assert plan == [] and why.endswith("(groups dpo and rho on seeds 0, 1) is finished: 2 of its runs are not")
    assert plan_lines(study_copy, s)[-1].startswith("later   confirm/dpo and dpo+lsam(best ρ) on seeds 5: its ρ")
    # --groups without rho still waits for the whole sweep
    assert confirmation_plan(study_copy, _quick(groups=("dpo", "confirm")))[0] == []
    before = summary.analyse(study_copy)
    run_study(study_copy, s, report=False)
    printed = capsys.readouterr().out
    _, runs = analysis.load(study_copy)
    best = analysis.best_of_sweep({k: runs[k] for k in ("dpo", "dpo+lsam(1e-1)", "dpo+lsam(1e-2)")}, [0, 1])
    pick = read_pick(study_copy)
    assert (
        pick["label"] == best
        and pick["sweep_seeds"] == [0, 1]
        and set(pick["gains"])
        == {
            "dpo+lsam(1e-1)",
            "dpo+lsam(1e-2)",
        }
    )
    assert f"confirmation: {best} (the sweep's pick, saved in {study_copy}/confirm.json)" in printed
    with open(record_path(study_copy, f"confirm/{best}/s5"), encoding="utf-8") as f:
        rec = json.load(f)
    assert rec["config"]["confirm"] is True and rec["spec"]["rho"] == pick["rho"] and rec["spec"]["seed"] == 5
    assert rec["method"] == best and "hessian" not in rec
    res = summary.analyse(study_copy)
    assert res["configs"]["dpo"] == before["configs"]["dpo"]  # the confirmation's DPO run is not pooled in
    c = res["confirmation"]
    assert c["label"] == best and c["seeds"] == [5] and c["runs_done"] == 2 and set(c["rows"]) == {"dpo", best}
    # a resume trains nothing; the saved pick stands even if the sweep would now pick otherwise
    mtime = os.path.getmtime(record_path(study_copy, "confirm/dpo/s5"))
    run_study(study_copy, s, report=False)
    assert "confirm/dpo/s5:" not in capsys.readouterr().out
    assert os.path.getmtime(record_path(study_copy, "confirm/dpo/s5")) == mtime
    other = "dpo+lsam(1e-2)" if best == "dpo+lsam(1e-1)" else "dpo+lsam(1e-1)"
    _edit_json(os.path.join(study_copy, "confirm.json"), lambda p: p.update(label=other, rho=analysis.rho_of(other)))
    assert plan_lines(study_copy, s)[-2:] == ["done    confirm/dpo/s5", f"todo    confirm/{other}/s5"]
    # a confirmation seed the plan trained on is not fresh
    s.confirm_seeds = (1,)
    s.seeds = (0,)
    plan, why = confirmation_plan(study_copy, s)
    assert plan == [] and why.startswith("confirmation seed 1 is not fresh (the plan trained on it: ")
