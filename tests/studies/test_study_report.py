"""The study's report (report.md, results.json, plots) on the synthetic study directory, configurations
finished on different seeds, and the confirmation runs kept apart from the sweep."""

import json

import pytest

from experiments.study import analysis
from experiments.study.command import main as study_main
from experiments.study.summary import analyse
from stats_reference import assert_matches_ref
from synthetic_study import KEY, SEEDS, STEPS, build_study, study_record, write_json

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

    out = build_study(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    real_open = builtins.open

    def refusing(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and str(file).startswith(str(tmp_path)):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing)
    assert study_main(["--out", out, "--report-only"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("study: error: cannot write ") and "Permission denied" in err[0]
    monkeypatch.setattr(builtins, "open", real_open)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_study_report_where_a_directory_stands_is_one_line(tmp_path, capsys):
    """A folder named report.md used to end in IsADirectoryError's traceback; the records stay untouched."""

    out = build_study(tmp_path)
    (tmp_path / "report.md").mkdir()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert study_main(["--out", out, "--report-only"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "report.md" in err[0] and "a directory is in its place" in err[0], err
    assert all(p.read_bytes() == b for p, b in before.items())  # the records and everything else kept


@pytest.mark.slow
def test_write_study_report_on_the_synthetic_study(tmp_path):
    from experiments.study.study_report import PNG, write_study_report

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
        f"`python -m experiments.study.command --out {out}` resumes."
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

    from experiments.study.study_report import write_study_report

    out = build_study(tmp_path)
    # DPO's seed 3 missed its step-20 evaluation, seed 4 has one more at step 50
    for seed, change in ((3, lambda log: [r for r in log if not (r["step"] == 20 and "eval_loss" in r)]),
                         (4, lambda log: [*log, dict(log[-2], step=50)])):  # fmt: skip
        path = tmp_path / "runs" / f"dpo_s{seed}" / "record.json"
        rec = json.loads(path.read_text(encoding="utf-8"))
        rec["log"] = change(rec["log"])
        write_json(path, rec)
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
# `python -m experiments.study.command --groups dpo --seeds 2` then `--groups dpo-small-step --seeds 3` into one directory)
# ---------------------------------------------------------------------------------------------------


def test_analyse_with_no_common_seed_between_sam_and_dpo(tmp_path):
    out = build_study(tmp_path, runs={"dpo": (2,), "dpo+lsam(1e-1)": (3,)})
    res = analyse(out)
    assert "dpo+lsam(1e-1)" not in res["paired"]  # nothing to pair: no comparison, not an empty one
    assert res["rho_sweep_adjusted"] == {}
    assert {c["verdict"] for c in res["claims"]} == {"not measured"}


@pytest.mark.slow
def test_write_study_report_with_no_common_seed_for_the_half_step_control(tmp_path):
    from experiments.study.study_report import write_study_report

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
    rec = study_record("dpo+lsam(1e-1)" if "lsam" in label else "dpo", base)
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
            write_json(tmp_path / "runs" / f"confirm_{label}_s{seed}" / "record.json", rec)
    # a "confirmation" on seed 2, which the plan trained on: not fresh
    write_json(tmp_path / "runs" / "confirm_dpo_s2" / "record.json", _confirm_record("dpo", 2, 2, [1.0] * 6))
    res = analyse(out)
    assert res["confirmation"]["pick"] is None and "seeds" not in res["confirmation"]  # no saved pick yet
    assert res["confirmation"]["others"] == ["dpo+lsam(1e-1)", "dpo+lsam(1e-2)"]
    (claim,) = [x for x in res["claims"] if "fresh seeds" in x["claim"]]
    assert claim["evidence"].startswith("confirmation runs of dpo+lsam(1e-1), dpo+lsam(1e-2) exist but no saved pick")
    write_json(tmp_path / "confirm.json", PICK | {"label": "dpo+lsam(1e-1)", "rho": 0.1})
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
    from experiments.study.study_report import write_study_report

    write_study_report(out)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| dpo (confirmation, fresh seeds) | 3 |" in md
    assert "| dpo+lsam(1e-1) (confirmation, fresh seeds) | 3 |" in md and "vs dpo (3 seeds) |" in md
    assert md.splitlines()[2].startswith("**Status: 14 of 51 planned runs finished**")  # 8 + 6 confirmation


@pytest.mark.slow
def test_confirmation_without_a_common_seed_and_part_done(tmp_path):
    """An interrupted confirmation (DPO on seed 5, the pick only on seed 6) reports its runs, no crash."""
    from experiments.study.study_report import write_study_report

    out = build_study(tmp_path)
    write_json(tmp_path / "confirm.json", PICK | {"label": "dpo+lsam(1e-1)", "rho": 0.1})
    write_json(tmp_path / "runs" / "confirm_dpo_s5" / "record.json", _confirm_record("dpo", 5, 2, [0.5] * 6))
    res = analyse(out)
    assert res["confirmation"]["runs_done"] == 1 and "seeds" not in res["confirmation"]
    write_json(tmp_path / "runs" / "confirm_dpo+lsam(1e-1)_s6" / "record.json",
           _confirm_record("dpo+lsam(1e-1)", 6, 3, [1.0] * 6))  # fmt: skip
    write_study_report(out)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "the confirmation (2 of 6 runs)" in md.splitlines()[2]
    assert "| dpo+lsam(1e-1) (confirmation, fresh seeds) | 1 |" in md
    res = _strict_json(tmp_path / "results.json")
    (claim,) = [x for x in res["claims"] if "fresh seeds" in x["claim"]]
    assert claim["verdict"] == "not measured" and "2 of 6 runs" in claim["evidence"]
