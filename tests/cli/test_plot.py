"""plot_runs: one PNG comparing runs from their metrics.jsonl (two real tiny runs, plus hand-written records)."""

import json

import pytest

from conftest import TINY_CPU
from logitsam.config import schema as C
from logitsam.errors import UserError
from logitsam.plot import PANELS, plot_runs, runs_figure
from logitsam.training.run import train


def tiny_run(out_dir, *overrides):
    cfg = C.load(TINY_CPU)
    C.apply_overrides(
        cfg, [f"--train.output_dir={out_dir}", "--train.save_model=false", "--train.print_logs=false", *overrides]
    )
    train(cfg)
    return str(out_dir)


def records(run_dir):
    return [json.loads(line) for line in open(f"{run_dir}/metrics.jsonl")]


def runs_drawn(ax):
    """Run labels of the data lines of a panel (reference lines are labelled '_...')."""
    return {line.get_label().split(":")[0] for line in ax.get_lines() if not line.get_label().startswith("_")}


def texts(ax):
    return [t.get_text() for t in ax.texts]


@pytest.mark.slow
def test_two_tiny_runs_one_png(tmp_path):
    import matplotlib.image

    sam = tiny_run(tmp_path / "sam")  # ρ = 1e-4
    dpo = tiny_run(tmp_path / "dpo", "--sam.rho=0")  # logs no sam/* metrics
    out = plot_runs([sam, dpo], str(tmp_path / "plots" / "compare.png"))
    assert out == str(tmp_path / "plots" / "compare.png")
    data = (tmp_path / "plots" / "compare.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 30_000
    assert matplotlib.image.imread(out).shape[:2] == (1500, 1300)

    fig = runs_figure([sam, dpo])
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert len(fig.axes) == len(PANELS) == 8 and len(panels) == 8
    for title in ("loss", "reward margin and accuracy", "drift vs reference (train)", "top-token probability"):
        assert runs_drawn(panels[title]) == {"sam", "dpo"}, title
    for title in ("eval loss and margin", "drift vs reference (eval)"):
        assert runs_drawn(panels[title]) == {"sam", "dpo"}, title
    for title in ("SAM losses", "SAM norms"):
        assert runs_drawn(panels[title]) == {"sam"}, title
    assert panels["SAM norms"].get_yscale() == "log"
    assert not any(texts(ax) for ax in fig.axes)  # every panel has data from some run

    (loss,) = [line for line in panels["loss"].get_lines() if line.get_label() == "dpo: loss"]
    train_recs = [r for r in records(dpo) if "loss" in r]
    assert list(loss.get_xdata()) == [r["step"] for r in train_recs] == [1, 2, 3, 4, 5, 6]
    assert list(loss.get_ydata()) == [r["loss"] for r in train_recs]
    (eval_drift,) = [
        line for line in panels["drift vs reference (eval)"].get_lines() if line.get_label() == "sam: chosen"
    ]
    assert list(eval_drift.get_xdata()) == [3, 6]
    (acc,) = [line for line in panels["reward margin and accuracy"].get_lines() if line.get_label() == "sam: accuracy"]
    assert acc.get_linestyle() == "--"


@pytest.mark.slow
def test_missing_metrics_say_not_logged_and_labels_are_used(tmp_path):
    run = tmp_path / "bare"
    run.mkdir()
    lines = [{"step": 1, "loss": 0.7}, {"step": 2, "loss": 0.6}, {"step": 2, "train_runtime": 1.0, "train_loss": 0.65}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    fig = runs_figure([str(run)], labels=["mine"])
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert runs_drawn(panels["loss"]) == {"mine"}
    assert list(panels["loss"].get_lines()[0].get_ydata()) == [0.7, 0.6]
    for title, ax in panels.items():
        assert texts(ax) == ([] if title == "loss" else ["not logged"]), title
    assert plot_runs([str(run)], str(tmp_path / "bare.png")) == str(tmp_path / "bare.png")


def test_bad_inputs_are_user_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"empty: no metrics\.jsonl"):
        plot_runs([str(empty)], str(tmp_path / "x.png"))
    with pytest.raises(UserError, match=r"nowhere: no metrics\.jsonl"):
        plot_runs([str(tmp_path / "nowhere")], str(tmp_path / "x.png"))
    # a malformed line before the end is an error (a torn *last* line is a run killed mid-write: plotted without it)
    (empty / "metrics.jsonl").write_text('{"step": 1, "loss": 0.7}\n{"step": 2, "lo\n{"step": 3, "loss": 0.5}\n')
    with pytest.raises(UserError, match=r"metrics\.jsonl:2: not valid JSON"):
        plot_runs([str(empty)], str(tmp_path / "x.png"))
    with pytest.raises(UserError, match="2 labels for 1 run"):
        plot_runs([str(empty)], str(tmp_path / "x.png"), labels=["a", "b"])
    with pytest.raises(UserError, match="at least one run"):
        plot_runs([], str(tmp_path / "x.png"))
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_binary_torn_and_absurd_metrics(tmp_path, caplog):
    """A binary file is a one-line error; a torn last line (a run killed mid-write) plots the complete
    lines; absurd values and steps are left out instead of breaking the axes."""
    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "metrics.jsonl").write_bytes(bytes([0x9A, 0xFF, 0x00, 0x10]) * 50)
    with pytest.raises(UserError, match=r"bin/metrics.jsonl: not a text file"):
        plot_runs([str(binary)], str(tmp_path / "b.png"))
    torn = tmp_path / "torn"
    torn.mkdir()
    (torn / "metrics.jsonl").write_text('{"step": 1, "loss": 0.7}\n{"step": 2, "loss": 0.6}\n{"step": 3, "lo')
    assert plot_runs([str(torn)], str(tmp_path / "t.png"))
    assert "incomplete last line" in caplog.text
    broken = tmp_path / "mid"
    broken.mkdir()
    (broken / "metrics.jsonl").write_text('{"step": 1, "lo\n{"step": 2, "loss": 0.6}\n')
    with pytest.raises(UserError, match=r"mid/metrics.jsonl:1: not valid JSON"):  # not the last line: an error
        plot_runs([str(broken)], str(tmp_path / "m.png"))
    absurd = tmp_path / "absurd"
    absurd.mkdir()
    rows = [
        {"step": 1, "loss": 1e308},
        {"step": 2, "loss": -1e308},
        {"step": 1e20, "loss": 0.5},
        {"step": 3, "loss": 0.5},
    ]
    (absurd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert plot_runs([str(absurd)], str(tmp_path / "a.png"))
