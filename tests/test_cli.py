"""The command line: user mistakes exit 2 with one line, a diverged run exits 3, never a traceback."""

import pytest

from logitsam import cli

HH = "tests/fixtures/hh.jsonl"


def run(capsys, *argv):
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("logitsam: error: "), err
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "/nonexistent/ckpt"], "--model: '/nonexistent/ckpt' not found"),
        (["--model", "tiny-random", "--ref", "/nonexistent/ref"], "--ref: '/nonexistent/ref' not found"),
        (["--model", "tiny-random", "--loss", "dp0"], "--loss: unknown loss 'dp0'"),
        (["--model", "tiny-random", "--beta", "-1"], "--beta: loss 'dpo': beta = -1.0"),
        (["--model", "tiny-random", "--beta", "nan"], "--beta: loss 'dpo': beta = nan"),
        (["--model", "tiny-random", "--probes", "0"], "--probes: must be ≥ 1, got 0"),
        (["--model", "tiny-random", "--probes", "-3"], "--probes: must be ≥ 1, got -3"),
        (["--model", "tiny-random", "--pairs", "0"], "--pairs: must be ≥ 1, got 0"),
        (["--model", "tiny-random", "--max-length", "0"], "--max-length: must be ≥ 2"),
        (["--model", "tiny-random", "--data", "nope.jsonl"], "nope.jsonl: file not found"),
    ],
)
def test_sharpness_mistakes(capsys, args, message):
    rc, _, err = run(capsys, "sharpness", "--data", HH, *args)  # a later --data wins
    assert rc == 2 and message in one_error_line(err)


def test_sharpness_out_that_cannot_be_written(capsys, tmp_path):
    (tmp_path / "f").write_text("keep")
    for out, message in ((tmp_path, "is a directory, not a file"), (tmp_path / "f" / "s.json", "f' is a file, not a directory")):
        rc, _, err = run(capsys, "sharpness", "--model", "tiny-random", "--data", HH, "--out", str(out))
        assert rc == 2 and message in one_error_line(err)
    assert (tmp_path / "f").read_text() == "keep"


def test_toy_out_that_is_a_file(capsys, tmp_path):
    (tmp_path / "f").write_text("keep")
    for out in (tmp_path / "f", tmp_path / "f" / "sub"):
        rc, _, err = run(capsys, "toy", "--out", str(out), "--no-checks")
        assert rc == 2 and "--out:" in one_error_line(err)
    assert (tmp_path / "f").read_text() == "keep"
    rc, _, err = run(capsys, "toy", "--out", str(tmp_path / "t"), "--classes", "1")
    assert rc == 2 and "--classes: must be ≥ 2" in one_error_line(err)


def test_train_config_errors_are_one_line(capsys, tmp_path):
    (tmp_path / "bad.yaml").write_text("train: {learning_rate: .nan}\n")
    rc, _, err = run(capsys, "train", "--config", str(tmp_path / "bad.yaml"))
    assert rc == 2 and "train.learning_rate: nan is not a finite number" in one_error_line(err)
    rc, _, err = run(capsys, "train", "--config", str(tmp_path))
    assert rc == 2 and "is a directory" in one_error_line(err)
    rc, _, err = run(capsys, "train", "--config", "configs/tiny-cpu.yaml", "--train.per_device_train_batch_size=0")
    assert rc == 2 and "per_device_train_batch_size: 0 must be > 0" in one_error_line(err)


def test_multi_line_user_errors_are_printed_on_one_line(capsys, monkeypatch):
    from logitsam import run as run_mod
    from logitsam.errors import DataError

    def bad(cfg):
        raise DataError("f.jsonl", 3, "prompt", "broken\nacross lines")

    monkeypatch.setattr(run_mod, "train", bad)
    rc, _, err = run(capsys, "train", "--config", "configs/tiny-cpu.yaml")
    assert rc == 2 and one_error_line(err) == "logitsam: error: f.jsonl:3: field 'prompt': broken across lines"


def test_training_diverged_exits_3(capsys, monkeypatch):
    from logitsam import run as run_mod
    from logitsam.trainer import TrainingDiverged

    def diverge(cfg):
        raise TrainingDiverged("non-finite loss (nan) at step 3; the last saved checkpoint is the last good state")

    monkeypatch.setattr(run_mod, "train", diverge)
    rc, _, err = run(capsys, "train", "--config", "configs/tiny-cpu.yaml")
    assert rc == 3
    assert err.strip() == (
        "logitsam: training diverged: non-finite loss (nan) at step 3; the last saved checkpoint is the last good state"
    )


def test_other_errors_are_not_swallowed(monkeypatch):
    from logitsam import run as run_mod

    def crash(cfg):
        raise RuntimeError("a bug")

    monkeypatch.setattr(run_mod, "train", crash)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["train", "--config", "configs/tiny-cpu.yaml"])


def test_losses_lists_ranges(capsys):
    rc, out, _ = run(capsys, "losses")
    assert rc == 0
    assert any(line.startswith("dpo") and "beta" in line and "(0, inf)" in line for line in out.splitlines())
