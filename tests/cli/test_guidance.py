"""What a user reads: ρ chosen by its logged strength ρ‖g‖/L, defaults in --help, logs without progress-bar
clutter in a file, and a README that starts with usage."""

import json
from pathlib import Path

import pytest

from logitsam import cli
from logitsam.config import schema as C
from logitsam.training.preflight import build_training_args
from logitsam.training.run import train

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_sam_runs_log_rho_g_over_loss(tmp_path):
    cfg = C.load(str(ROOT / "configs" / "tiny-cpu.yaml"))
    C.apply_overrides(cfg, [f"--train.output_dir={tmp_path}", "--train.eval_steps=null", "--train.max_steps=2",
                            "--sam.rho=0.05", "--train.print_logs=false"])  # fmt: skip
    train(cfg)
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(recs) == 2
    for r in recs:
        expected = r["sam/eps_norm"] * r["sam/grad_norm"] / r["sam/loss_pre"]
        assert r["sam/eps_norm"] == pytest.approx(0.05) and r["sam/rho_g_over_loss"] == pytest.approx(
            expected, rel=1e-4
        )


def test_help_explains_rho_by_its_strength_and_shows_defaults(capsys):
    for argv in (["train", "--help"], ["evaluate", "--help"]):
        with pytest.raises(SystemExit):
            cli.main(argv)
    text = " ".join(capsys.readouterr().out.split())
    assert "sam/rho_g_over_loss" in text and "paper: 1e-5 to 1e-3" not in text
    assert "(default: chosen)" in text and "sentiment judge" in text and "default: as training does" in text
    assert "keep the newest this many checkpoints (2:" in text


def test_a_log_file_gets_no_progress_bars():
    args = build_training_args(C.TrainConfig(output_dir="unused"), has_eval=False)  # pytest's stderr: no TTY
    assert args.disable_tqdm is True


def test_the_readme_starts_with_usage():
    readme = (ROOT / "README.md").read_text()
    intro = readme.split("What you get:")[0]
    assert "nats" not in intro and "[" not in intro  # no intervals before any usage
    order = [readme.index(h) for h in ("## The two commands", "## Train on your own data",
                                       "## Your own data on a real small model", "## Results")]  # fmt: skip
    assert order == sorted(order)
