"""The command line: user mistakes exit 2 with one line, a diverged run exits 3, never a traceback."""

import json
import re

import pytest

from conftest import FIXTURES, ROOT, TINY_CPU
from logitsam import cli

HH = str(FIXTURES / "hh.jsonl")


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
    for out, message in (
        (tmp_path, "is a directory, not a file"),
        (tmp_path / "f" / "s.json", "f' is a file, not a directory"),
    ):
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
    rc, _, err = run(capsys, "train", "--config", TINY_CPU, "--train.per_device_train_batch_size=0")
    assert rc == 2 and "per_device_train_batch_size: 0 must be > 0" in one_error_line(err)


def test_multi_line_user_errors_are_printed_on_one_line(capsys, monkeypatch):
    from logitsam.errors import DataError
    from logitsam.training import run as run_mod

    def bad(cfg):
        raise DataError("f.jsonl", 3, "prompt", "broken\nacross lines")

    monkeypatch.setattr(run_mod, "train", bad)
    rc, _, err = run(capsys, "train", "--config", TINY_CPU)
    assert rc == 2 and one_error_line(err) == "logitsam: error: f.jsonl:3: field 'prompt': broken across lines"


def test_training_diverged_exits_3(capsys, monkeypatch):
    from logitsam.training import run as run_mod
    from logitsam.training.trainer import TrainingDiverged

    def diverge(cfg):
        raise TrainingDiverged("non-finite loss (nan) at step 3; the last saved checkpoint is the last good state")

    monkeypatch.setattr(run_mod, "train", diverge)
    rc, _, err = run(capsys, "train", "--config", TINY_CPU)
    assert rc == 3
    assert err.strip() == (
        "logitsam: training diverged: non-finite loss (nan) at step 3; the last saved checkpoint is the last good state"
    )


def test_other_errors_are_not_swallowed(monkeypatch):
    from logitsam.training import run as run_mod

    def crash(cfg):
        raise RuntimeError("a bug")

    monkeypatch.setattr(run_mod, "train", crash)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["train", "--config", TINY_CPU])


def test_losses_lists_ranges(capsys):
    from logitsam.core.registry import LOSSES

    rc, out, _ = run(capsys, "losses")
    assert rc == 0
    lines = out.splitlines()
    assert {line.split(":")[0] for line in lines if line and not line.startswith((" ", "Set "))} == set(LOSSES) | {
        "weighted"  # a weighted sum of them (loss.terms)
    }
    assert "sft: chosen NLL, the batch's token mean" in out and "couples the batch's pairs" in out
    assert re.search(r"use_weighting +default False +range true or false", out)
    dpo = lines.index(next(line for line in lines if line.startswith("dpo: ")))
    beta = lines[dpo + 1].split()
    assert beta[:6] == ["beta", "default", "0.1", "range", "(0,", "inf)"] and "β < 0" in lines[dpo + 1]


def test_train_help_lists_every_config_key_and_loss(capsys):
    from logitsam.config.fields import describe_fields
    from logitsam.core.registry import LOSSES

    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for r in describe_fields():
        line = next(line for line in out.splitlines() if line.split()[:1] == [r.key])
        assert r.type in line and f" {r.default} " in line and line.rstrip().endswith(r.help), line
    assert "--section.key value" in out
    assert all(name in out.split("losses (loss.name")[1] for name in LOSSES)


@pytest.mark.slow
def test_train_from_another_directory_with_space_overrides(capsys, tmp_path, monkeypatch):

    from logitsam.config import schema as C

    config = TINY_CPU
    fixture = str(FIXTURES / "explicit.jsonl")
    monkeypatch.chdir(tmp_path)
    rc, out, _ = run(
        capsys,
        "train",
        "--config",
        config,
        "--train.output_dir",
        "out",
        "--train.max_steps",
        "2",
        "--train.eval_steps=null",
        "--train.print_logs",
        "false",
        "--train.save_model=false",
    )
    assert rc == 0 and "config.yaml and metrics.jsonl in out" in out
    saved = C.load(str(tmp_path / "out" / "config.yaml"))
    assert saved.data.train_files == [fixture] and saved.train.max_steps == 2
    assert saved.model.dtype == "float32" and saved.train.bf16 is False  # 'auto' and null, as used


def test_overrides_without_a_value_or_key(capsys):
    for argv, message in (
        (["--sam.rho"], "override '--sam.rho': expected --section.key=value or --section.key value"),
        (["stray"], "override 'stray': expected"),
    ):
        rc, _, err = run(capsys, "train", "--config", TINY_CPU, *argv)
        assert rc == 2 and message in one_error_line(err)


@pytest.mark.parametrize("command", ["train", "sft"])
def test_config_given_twice_is_refused(capsys, command):
    """A second --config used to replace the first silently (the last one trained)."""
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--config", TINY_CPU, "--config", str(ROOT / "configs/pythia-hh-dpo.yaml")])
    assert e.value.code == 2 and "--config given twice" in capsys.readouterr().err


def test_other_commands_refuse_stray_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["toy", "--sam.rho=1"])
    assert e.value.code == 2 and "unrecognized arguments: --sam.rho=1" in capsys.readouterr().err


@pytest.fixture
def fake_plot(monkeypatch):
    """logitsam.plot is written on another branch: the CLI only has to call plot_runs as documented."""
    import sys
    import types

    from logitsam.errors import UserError

    calls = []

    def plot_runs(run_dirs, out, labels=None):
        calls.append((run_dirs, out, labels))
        if any("nometrics" in d for d in run_dirs):
            raise UserError(f"{run_dirs[-1]}: no metrics.jsonl")
        return out

    monkeypatch.setitem(sys.modules, "logitsam.plot", types.SimpleNamespace(plot_runs=plot_runs))
    return calls


def test_plot_calls_plot_runs(capsys, tmp_path, fake_plot):
    out = str(tmp_path / "p.png")
    rc, printed, _ = run(capsys, "plot", "runs/a", "runs/b", "--out", out, "--labels", "DPO, DPO+SAM")
    assert rc == 0 and fake_plot == [(["runs/a", "runs/b"], out, ["DPO", "DPO+SAM"])]
    assert printed.strip() == f"wrote {out}"
    rc, _, _ = run(capsys, "plot", "runs/a", "--out", out)
    assert rc == 0 and fake_plot[-1] == (["runs/a"], out, None)


def test_plot_mistakes_are_one_line(capsys, tmp_path, fake_plot):
    out = str(tmp_path / "p.png")
    rc, _, err = run(capsys, "plot", "a", "b", "--out", out, "--labels", "one")
    assert rc == 2 and "--labels: 1 labels for 2 run directories" in one_error_line(err)
    rc, _, err = run(capsys, "plot", "a", "--out", str(tmp_path))
    assert rc == 2 and "--out:" in one_error_line(err) and "is a directory" in err
    rc, _, err = run(capsys, "plot", "x/nometrics", "--out", out)
    assert rc == 2 and "x/nometrics: no metrics.jsonl" in one_error_line(err)
    assert len(fake_plot) == 1  # only the last call reached plot_runs
    with pytest.raises(SystemExit):
        cli.main(["plot", "a"])  # --out is required


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["toy", "--seed", "99999999999999999999999"], "--seed: must be in [0, 2**32), got 99999999999999999999999"),
        (["toy", "--seed", "-1"], "--seed: must be in [0, 2**32)"),
        (["sharpness", "--model", "tiny-random", "--data", HH, "--seed", str(2**32)], "--seed: must be in [0, 2**32)"),
        (["toy", "--rho", "0"], "--rho: is |ρ| (the SAM runs use +ρ and −ρ) and must be > 0, got 0.0"),
        (["toy", "--rho", "-0.5"], "--rho: is |ρ| (the SAM runs use +ρ and −ρ) and must be > 0, got -0.5"),
        (["toy", "--out", "/proc/logitsam_toy"], "--out: cannot write into '/proc/logitsam_toy'"),
        (["toy", "--out", "/proc"], "--out: cannot write into '/proc'"),
        (["sharpness", "--model", "tiny-random", "--data", HH, "--out", "/proc/x/s.json"], "--out: cannot write into"),
    ],
)
def test_arguments_out_of_range_or_unwritable(capsys, argv, message):
    rc, _, err = run(capsys, *argv)
    assert rc == 2 and message in one_error_line(err)


@pytest.mark.slow
def test_sharpness_takes_the_first_pairs_that_survive_tokenization(capsys, tmp_path):
    rows = [{"prompt": "x" * 400, "chosen": " a", "rejected": " b"}] * 3  # dropped: prompt too long
    rows += [{"prompt": f"q{i}", "chosen": f" yes {i}", "rejected": f" no {i}"} for i in range(3)]
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "s.json"
    argv = ["--model", "tiny-random", "--data", str(data), "--pairs", "2", "--probes", "1", "--max-length", "64"]
    rc, _, _ = run(capsys, "sharpness", *argv, "--out", str(out))
    assert rc == 0 and json.loads(out.read_text())["pairs"] == 2


def test_sharpness_with_broken_model_weights(capsys, tmp_path):
    from logitsam.models import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    tiny_model(len(tok)).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    capsys.readouterr()  # save_pretrained's progress bar
    rc, _, err = run(capsys, "sharpness", "--model", str(tmp_path / "m"), "--data", HH)
    assert rc == 2 and f"{weights} is truncated or corrupt" in one_error_line(err)


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("logitsam ")


def test_ctrl_c_during_train_prints_the_resume_command(capsys, monkeypatch, tmp_path):
    """Ctrl-C in `logitsam train`: one line with the exact resume command, exit 130, no traceback."""

    def interrupted(cfg):
        (tmp_path / "config.yaml").write_text("x")  # the run got as far as writing its config
        raise KeyboardInterrupt

    monkeypatch.setattr("logitsam.training.run.train", interrupted)
    argv = ["train", "--config", TINY_CPU, f"--train.output_dir={tmp_path}"]
    # before its first checkpoint a resume cannot work: the line says how to start again instead
    assert cli.main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err == (
        f"interrupted: checkpoints already saved in {tmp_path} are kept; no checkpoint was saved yet: start again "
        "with the same command and --train.overwrite_output_dir=true"
    )
    (tmp_path / "checkpoint-2").mkdir()
    assert cli.main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err == (
        f"interrupted: checkpoints already saved in {tmp_path} are kept; to resume: logitsam train --config "
        f"{tmp_path}/config.yaml --train.resume_from_checkpoint=last"
    )


def test_switching_the_loss_on_the_command_line_drops_the_files_foreign_keys(capsys, monkeypatch, tmp_path):
    """--loss.name=slic with a file that sets beta (a DPO key): the file's beta is dropped with a note;
    a beta given on the command line is still refused."""
    seen = {}
    monkeypatch.setattr("logitsam.training.run.train", lambda cfg: seen.setdefault("cfg", cfg) and {"metrics": {}})
    argv = ["train", "--config", TINY_CPU, f"--train.output_dir={tmp_path}", "--loss.name=slic"]
    assert cli.main(argv) == 0
    assert seen["cfg"].loss.name == "slic" and seen["cfg"].loss.beta is None
    assert (
        "note: loss 'slic' has no loss.beta: the config file's value(s) for loss 'dpo' dropped"
        in capsys.readouterr().err
    )
    seen.clear()
    monkeypatch.setattr(
        "logitsam.training.run.train", lambda cfg: __import__("logitsam.training.run").training.run.loss_setup(cfg)
    )
    assert cli.main([*argv, "--loss.beta=0.2"]) == 2
    assert "loss.beta: loss 'slic' has no beta" in capsys.readouterr().err


def test_resuming_a_copied_run_with_its_config_is_refused(capsys, monkeypatch, tmp_path):
    """A run folder copied elsewhere keeps its config.yaml, whose train.output_dir names the original:
    resuming the copy with it would have resumed and written into the original run."""
    seen = []
    monkeypatch.setattr("logitsam.training.run.train", lambda cfg: seen.append(cfg) or {"metrics": {}})
    original, copy_dir = tmp_path / "orig", tmp_path / "copy"
    copy_dir.mkdir()
    (copy_dir / "metrics.jsonl").write_text("{}\n")
    (copy_dir / "config.yaml").write_text(f"train:\n  output_dir: {original}\n")
    cfg = str(copy_dir / "config.yaml")
    rc, _, err = run(capsys, "train", "--config", cfg, "--train.resume_from_checkpoint=last")
    assert rc == 2 and "a copied or moved run?" in one_error_line(err) and f"--train.output_dir={copy_dir}" in err
    assert not seen
    rc, _, _ = run(
        capsys, "train", "--config", cfg, "--train.resume_from_checkpoint=last", f"--train.output_dir={copy_dir}"
    )
    assert rc == 0 and seen and seen[0].train.output_dir == str(copy_dir)


@pytest.mark.parametrize("command", ["train", "sft", "evaluate", "generate"])
def test_ctrl_c_anywhere_in_a_command_is_one_line_and_exit_130(capsys, monkeypatch, tmp_path, command):
    """Ctrl-C while train reads its config (before its own handler) or at any time in evaluate/generate
    printed a KeyboardInterrupt traceback."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    if command in ("train", "sft"):
        monkeypatch.setattr("logitsam.config.schema.load", interrupted)
        argv = [command, "--config", TINY_CPU, f"--train.output_dir={tmp_path}"]
    else:
        monkeypatch.setattr("logitsam.evaluation.command.run", interrupted)
        argv = [
            command,
            "--model",
            "tiny-random",
            "--prompts",
            str(FIXTURES / "explicit.jsonl"),
            "--out",
            str(tmp_path),
        ]
    rc, _, err = run(capsys, *argv)
    assert rc == 130 and err.strip() == "logitsam: interrupted (Ctrl-C)"


@pytest.fixture(scope="module")
def no_template_model(tmp_path_factory):
    """A saved tiny model whose tokenizer has no chat template."""
    from logitsam.models import tiny_model, tiny_tokenizer

    path = tmp_path_factory.mktemp("models") / "plain"
    tok = tiny_tokenizer()
    tok.chat_template = None
    tiny_model(len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("command", ["evaluate", "generate"])
def test_chat_without_a_chat_template_names_the_model_and_the_flag(capsys, tmp_path, no_template_model, command):
    """--chat on a tokenizer without a template was a raw transformers traceback, after --out was claimed."""
    out = tmp_path / "out"
    argv = [command, "--model", "tiny-random", "--model", no_template_model, "--chat", "--out", str(out),
            "--prompts", str(FIXTURES / "explicit.jsonl")]  # fmt: skip
    rc, _, err = run(capsys, *argv)
    line = one_error_line(err)
    assert rc == 2 and f"--chat: {no_template_model!r}" in line and "no chat template" in line
    assert not out.exists() or not any(out.iterdir())  # refused before anything was written


def test_message_rows_without_a_chat_template_name_the_model(capsys, tmp_path, no_template_model):
    argv = ["train", "--config", TINY_CPU, f"--model.name_or_path={no_template_model}",
            f"--data.train_files={FIXTURES / 'ultrafeedback.jsonl'}", f"--train.output_dir={tmp_path / 'run'}"]  # fmt: skip
    rc, _, err = run(capsys, *argv)
    line = one_error_line(err)
    assert rc == 2 and "ultrafeedback.jsonl:1" in line and f"model.name_or_path {no_template_model!r}" in line
    assert "no chat template" in line
