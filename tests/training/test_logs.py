"""Run logs: one compact console line of numbers per logging step, numeric metrics.jsonl, the final evaluation once."""

import json
import re

import numpy as np
import pytest
import torch

from conftest import TINY_CPU
from logitsam.config import schema as C
from logitsam.training.logs import log_line, number, numeric
from logitsam.training.run import train


def test_number_formats():
    assert number(0.69314718, 4) == "0.6931"
    assert number(0.5, 2) == "0.50"
    assert number(1e-4) == "1e-4"
    assert number(2.5e-5) == "2.5e-5"
    assert number(-0.0312) == "-0.0312"
    assert number(0.012) == "0.012"
    assert number(0.0) == "0"
    assert number(123456.0) == "1.23e5"
    assert number(float("nan")) == "nan"


def test_numeric_turns_scalars_into_numbers_and_drops_the_rest():
    logs = {"a": torch.tensor(0.5), "b": np.float32(2.0), "c": 3, "d": True, "e": "text", "f": torch.ones(2)}
    out = numeric(logs)
    assert out == {"a": 0.5, "b": 2.0, "c": 3, "d": 1}
    assert all(type(v) in (int, float) for v in out.values())


def test_log_line_train_eval_and_summary():
    train_logs = {
        "loss": 0.693147,
        "rewards/margins": 0.0123,
        "rewards/accuracies": 0.5,
        "logps/chosen_drift": -0.0312,
        "logps/rejected_drift": -0.25,
        "sam/eps_norm": 1e-4,
        "grad_norm": torch.tensor(2.5),
        "epoch": 0.5,
    }
    assert log_line(12, train_logs) == (
        "step 12 | loss 0.6931 | margin 0.0123 | acc 0.50 | chosen drift -0.0312 | rejected drift -0.25"
        " | sam eps 1e-4 | grad 2.5"
    )
    assert (
        log_line(12, {"eval_loss": 0.6, "eval_rewards/accuracies": 1.0, "epoch": 1.0})
        == "eval 12 | loss 0.6000 | acc 1.00"
    )
    assert log_line(6, {"train_runtime": 15.63, "train_loss": 0.56117, "total_flos": 1e9}) == (
        "step 6 | done in 15.6 s | mean loss 0.5612"
    )


def tiny(tmp_path, *overrides):
    cfg = C.load(TINY_CPU)
    C.apply_overrides(cfg, [f"--train.output_dir={tmp_path}", "--train.save_model=false", *overrides])
    return cfg


def records(out_dir):
    return [json.loads(line) for line in open(f"{out_dir}/metrics.jsonl")]


@pytest.mark.slow
def test_run_prints_numbers_and_evaluates_the_last_step_once(tmp_path, capsys):
    out = train(tiny(tmp_path))  # 6 steps, eval every 3: the schedule evaluates the last step already
    printed = capsys.readouterr().out
    steps = re.findall(r"^step (\d+) \| loss (\d\.\d{4}) \| margin \S+ \| acc \d\.\d\d \| chosen drift ", printed, re.M)
    assert [int(s) for s, _ in steps] == [1, 2, 3, 4, 5, 6]
    assert re.findall(r"^eval (\d+) \| loss \d\.\d{4}", printed, re.M) == ["3", "6"]
    assert "sam eps 1e-4" in printed and "'loss'" not in printed  # no dict-of-strings records
    recs = records(tmp_path)
    evals = [r for r in recs if "eval_loss" in r]
    assert [r["step"] for r in evals] == [3, 6]  # no duplicate evaluation after training
    assert out["metrics"]["eval_loss"] == evals[-1]["eval_loss"]
    for r in recs:
        assert all(type(v) in (int, float) for v in r.values()), r
    losses = {int(s): float(v) for s, v in steps}
    assert all(losses[r["step"]] == pytest.approx(r["loss"], abs=5e-5) for r in recs if "loss" in r)


@pytest.mark.slow
def test_final_evaluation_runs_when_the_schedule_missed_the_last_step(tmp_path):
    out = train(tiny(tmp_path, "--train.eval_steps=4", "--train.print_logs=false"))
    evals = [r for r in records(tmp_path) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [4, 6]
    assert out["metrics"]["eval_loss"] == evals[-1]["eval_loss"]


@pytest.mark.slow
def test_tensorboard_events_hold_train_sam_and_eval_scalars(tmp_path):
    """report_to: [tensorboard] with the real writer (offline): the scalars are the logged numbers."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny(tmp_path, "--train.max_steps=3", "--train.report_to=[tensorboard]", "--train.print_logs=false"))
    (log_dir,) = {p.parent for p in tmp_path.glob("runs/*/events.out.tfevents.*")}
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/sam/eps_norm", "train/sam/loss_post", "eval/loss", "eval/logps/chosen_drift"} <= tags
    logged = [r for r in records(tmp_path) if "loss" in r]
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [r["step"] for r in logged] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in logged], rel=1e-6)  # stored as float32
    assert [e.value for e in acc.Scalars("train/sam/eps_norm")] == pytest.approx([1e-4] * 3, rel=1e-6)
    assert [e.step for e in acc.Scalars("eval/loss")] == [3]  # evaluated once, at the last step


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["logits", "full"])
def test_loss_is_the_clean_loss_for_sam_runs(tmp_path, mode):
    """`loss` is the loss at W in every mode (the perturbed one is sam/loss_post), so SAM and plain runs
    plot like with like: step 1 of a SAM run logs the same loss as step 1 of the plain run (same weights)."""
    over = ["--train.max_steps=2", "--train.print_logs=false"]
    train(tiny(tmp_path / "sam", *over, f"--sam.mode={mode}", "--sam.rho=0.5"))
    train(tiny(tmp_path / "plain", *over, "--sam.rho=0"))
    sam = [r for r in records(tmp_path / "sam") if "loss" in r and "step" in r and "train_loss" not in r]
    plain = [r for r in records(tmp_path / "plain") if "loss" in r and "step" in r and "train_loss" not in r]
    assert all(r["loss"] == r["sam/loss_pre"] != r["sam/loss_post"] for r in sam)
    assert sam[0]["loss"] == pytest.approx(plain[0]["loss"], rel=1e-6)


def test_whole_run_loss_weights_intervals_and_needs_every_step():
    from logitsam.training.logs import whole_run_loss

    hist = [{"step": 2, "loss": 1.0}, {"step": 2, "eval_loss": 9.0}, {"step": 5, "loss": 0.5}, {"step": 6, "loss": 0.2}]
    assert whole_run_loss(hist, 6) == pytest.approx((2 * 1.0 + 3 * 0.5 + 1 * 0.2) / 6)
    assert whole_run_loss(hist, 7) is None  # step 7 was never logged (a last partial interval)
    assert whole_run_loss([{"step": 1, "loss": float("nan")}], 1) is None
    assert whole_run_loss([], 3) is None
