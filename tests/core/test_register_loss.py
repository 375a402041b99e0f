"""register_loss: a loss from outside the package, checked like a built-in and usable by name everywhere."""

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_CPU
from logitsam import losses as L
from logitsam.core.losses import LossOutput, PreferenceLogps


def margin_loss(inp: PreferenceLogps, *, beta: float = 0.5, margin: float = 0.0) -> LossOutput:
    """A reference-free sigmoid loss on summed log-probs with a target margin (a user's own loss)."""
    losses = -F.logsigmoid(beta * (inp.chosen - inp.rejected) - margin)
    return LossOutput(losses, (beta * inp.chosen).detach(), (beta * inp.rejected).detach())


@pytest.fixture
def registered():
    spec = L.register_loss(
        "margin_sigmoid",
        margin_loss,
        needs_reference=False,
        ranges={"beta": L.positive("a temperature"), "margin": L.nonnegative("a margin")},
        summary="test loss",
    )
    yield spec
    L.unregister_loss("margin_sigmoid")
    assert "margin_sigmoid" not in L.LOSSES


def test_a_registered_loss_is_used_and_checked_like_a_builtin(registered):
    assert L.get_loss("margin_sigmoid") is registered and registered.defaults == {"beta": 0.5, "margin": 0.0}
    one = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    inp = PreferenceLogps(one(-10.0), one(-12.0), one(5.0), one(4.0))
    out = L.compute_loss("margin_sigmoid", inp, margin=0.5)
    assert out.losses.item() == pytest.approx(
        torch.nn.functional.softplus(torch.tensor(-0.5)).item()
    )  # −log σ(1 − 0.5)
    with pytest.raises(L.HyperparameterError, match=r"margin_sigmoid.*beta"):
        L.resolve_hparams(registered, {"beta": -1.0})
    with pytest.raises(L.HyperparameterError, match="no hyperparameter 'gamma'"):
        L.resolve_hparams(registered, {"gamma": 1.0})
    assert any(r.loss == "margin_sigmoid" and r.hparam == "margin" for r in L.describe_losses())


def _positional(inp, beta=0.1):
    return margin_loss(inp)


def _no_default(inp, *, beta):
    return margin_loss(inp)


def _tuple(inp, *, beta: float = 0.1):
    return (margin_loss(inp).losses,)


def _scalar(inp, *, beta: float = 0.1):
    out = margin_loss(inp)
    return LossOutput(out.losses.mean(), out.chosen_rewards, out.rejected_rewards)


def _detached(inp, *, beta: float = 0.1):
    out = margin_loss(inp)
    return LossOutput(out.losses.detach(), out.chosen_rewards, out.rejected_rewards)


def _raises(inp, *, beta: float = 0.1):
    return margin_loss(inp) + 1  # TypeError inside the user's function


def _needs_ref(inp, *, beta: float = 0.1):
    d_pos, d_neg = inp.logratios()
    return LossOutput(-F.logsigmoid(beta * (d_pos - d_neg)), d_pos.detach(), d_neg.detach())


@pytest.mark.parametrize(
    ("name", "fn", "kw", "message"),
    [
        ("dpo", margin_loss, {}, "'dpo' is a built-in loss"),
        ("my loss", margin_loss, {}, "identifier-like"),
        ("p1", _positional, {}, "'beta' must be keyword-only"),
        ("p2", _no_default, {}, "'beta' needs a default"),
        ("p3", "not a function", {}, "fn must be a function"),
        ("p4", _tuple, {}, "must return a LossOutput, got tuple"),
        ("p5", _scalar, {}, r"LossOutput.losses must have shape \(B,\)"),
        ("p6", _detached, {}, "do not depend on the policy log-probs"),
        ("p7", _raises, {}, "calling it on a 3-pair test batch failed: TypeError"),
        ("p8", _needs_ref, {"needs_reference": False}, "needs reference log-probs"),
        ("p9", margin_loss, {"ranges": {"gamma": L.positive()}}, r"ranges for \['gamma'\]"),
        ("p10", margin_loss, {"ranges": {"margin": L.positive()}}, "default margin = 0.0 is outside its range"),
    ],
)
def test_bad_registrations_are_refused_with_the_reason(name, fn, kw, message):
    kw = {"needs_reference": False, **kw}
    before = dict(L.LOSSES)
    with pytest.raises((TypeError, ValueError), match=message):
        L.register_loss(name, fn, **kw)
    assert before == L.LOSSES  # nothing half-registered


def test_registering_twice_needs_replace(registered):
    with pytest.raises(ValueError, match="already registered"):
        L.register_loss("margin_sigmoid", margin_loss, needs_reference=False)
    again = L.register_loss("margin_sigmoid", margin_loss, needs_reference=False, replace=True)
    assert L.get_loss("margin_sigmoid") is again
    with pytest.raises(ValueError, match="built-in"):
        L.unregister_loss("dpo")
    L.register_loss("ref_sigmoid", _needs_ref, needs_reference=True)  # uses ref_*: probed with them
    L.unregister_loss("ref_sigmoid")


@pytest.mark.slow
def test_a_registered_loss_trains_with_logits_sam_by_name(registered, tmp_path):
    from logitsam.config import schema as C
    from logitsam.training.run import train

    cfg = C.load(TINY_CPU)
    C.apply_overrides(
        cfg,
        [
            f"--train.output_dir={tmp_path}",
            "--train.eval_steps=null",
            "--train.max_steps=2",
            "--loss.name=margin_sigmoid",
            "--loss.beta=null",
            "--loss.params={margin: 0.25}",
            "--sam.rho=0.01",
        ],
    )
    train(cfg)
    rec = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rec[0]["sam/loss_post"] > rec[0]["sam/loss_pre"] > 0
    saved = (tmp_path / "config.yaml").read_text()
    assert "margin_sigmoid" in saved and "margin: 0.25" in saved


LOSS_MODULE = """
import torch.nn.functional as F
from logitsam import losses as L

def shifted(inp, *, beta: float = 0.5):
    losses = -F.logsigmoid(beta * (inp.chosen - inp.rejected) - 0.1)
    return L.LossOutput(losses, (beta * inp.chosen).detach(), (beta * inp.rejected).detach())

L.register_loss("shifted_sigmoid", shifted, needs_reference=False, ranges={"beta": L.positive("a temperature")},
                summary="a user's loss from a .py file")
"""


@pytest.mark.slow
@pytest.mark.parametrize("as_file", [True, False])
def test_a_loss_from_loss_imports_trains_and_resumes_from_config_yaml(tmp_path, monkeypatch, as_file):
    import sys

    from logitsam import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "userloss.py").write_text(LOSS_MODULE)
    tiny = TINY_CPU

    def forget():  # as a new process would start: the loss unknown, the module not imported
        L.LOSSES.pop("shifted_sigmoid", None)
        for name in [n for n in sys.modules if "userloss" in n]:
            del sys.modules[name]

    forget()
    common = ["--train.eval_steps=null", "--data.eval_fraction=0", "--train.print_logs=false", "--train.save_steps=2"]
    assert cli.main(["train", "--config", tiny, "--loss.name=shifted_sigmoid", "--train.output_dir=x", *common]) == 2
    entry = "userloss.py" if as_file else "userloss"
    argv = ["train", "--config", tiny, "--loss.name=shifted_sigmoid", f"--loss.imports={entry}", "--loss.beta=0.2",
            "--train.max_steps=2", "--train.output_dir=run", *common]  # fmt: skip
    try:
        assert cli.main(argv) == 0
        saved = (tmp_path / "run" / "config.yaml").read_text()
        assert f"- {tmp_path / 'userloss.py'}" in saved  # a file, or a module of the current dir: its absolute path
        first = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        forget()  # resume from the run's own config.yaml, longer
        assert cli.main(["train", "--config", "run/config.yaml", "--train.resume_from_checkpoint=last",
                         "--train.max_steps=4", "--train.resume_allow_changes=true"]) == 0  # fmt: skip
        after = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in after if "loss" in r] == [1, 2, 3, 4]
        assert [r["loss"] for r in after[:2]] == [r["loss"] for r in first[:2]]
        forget()  # the card's command: a new run from config.yaml
        card = (tmp_path / "run" / "README.md").read_text()
        command = card.split("```bash\n")[1].split("\n```")[0].replace("<new directory>", "../again").split()
        monkeypatch.chdir(tmp_path / "run")  # the card's command, run where the card is
        assert command[:4] == ["logitsam", "train", "--config", "config.yaml"] and cli.main(command[1:]) == 0
        assert "shifted_sigmoid" in (tmp_path / "again" / "README.md").read_text()
    finally:
        forget()
