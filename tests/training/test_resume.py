"""Resuming end to end: a resume that fails loses nothing, a resume with other settings is refused
(unless allowed), and checkpoints with unreadable weights or trainer state are never resumed from."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from conftest import FIXTURES, tiny_config
from logitsam.config import schema as C
from logitsam.errors import ConfigError, DataError
from logitsam.training.run import train

pytestmark = pytest.mark.slow  # trains or launches processes: `pytest -m 'not slow'` skips it


def cfg_for(out, *overrides):
    return tiny_config(out, *overrides)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 6-step run (checkpoints 3 and 6), trained once for the module; tests copy it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(cfg_for(out))
    return out


@pytest.fixture
def run_dir(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def snapshot(out):
    """Every file under the run directory, by relative path, with its bytes (a refused or failed start must
    change none of them, add none and remove none)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def steps(out):
    return [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["--data.train_files=[/nonexistent/d.jsonl]"], DataError, "file not found"),
        (["--model.lora_r=2", "--model.lora_target_modules=[nope]"], ConfigError, "model.lora_target_modules"),
        (["--train.extra.adam_beta1=5.0"], ConfigError, "train.extra.adam_beta1"),
    ],
)
def test_a_resume_that_fails_trims_and_overwrites_nothing(run_dir, overrides, error, message):
    before = snapshot(run_dir)
    ckpt = run_dir / "checkpoint-3"
    with pytest.raises(error, match=message.replace(".", r"\.")):
        train(
            cfg_for(run_dir, f"--train.resume_from_checkpoint={ckpt}", "--train.resume_allow_changes=true", *overrides)
        )
    assert snapshot(run_dir) == before  # metrics.jsonl not trimmed to step 3, config.yaml not rewritten


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ([], "previous run"),  # a new run into a finished run's directory
        (["--loss.name=nope"], "loss.name"),
        (["--train.overwrite_output_dir=true", "--data.train_files=[/nonexistent/d.jsonl]"], "file not found"),
        (["--train.overwrite_output_dir=true", "--model.lora_r=2", "--model.lora_target_modules=[nope]"], "lora"),
        (["--train.resume_from_checkpoint=last", "--train.learning_rate=0.5"], "learning_rate"),
    ],
)
def test_a_refused_start_changes_no_byte_of_the_directory(run_dir, overrides, match):
    """Every refused start — a new run over an old one, a bad setting, overwrite with bad data or a bad
    model, a resume with other settings — leaves every file of output_dir as it was (README's promise)."""
    before = snapshot(run_dir)
    with pytest.raises((ConfigError, DataError), match=match):
        train(cfg_for(run_dir, *overrides))
    assert snapshot(run_dir) == before


def test_resume_with_other_settings_is_refused_and_lists_them(run_dir):
    before = snapshot(run_dir)
    ckpt = f"--train.resume_from_checkpoint={run_dir / 'checkpoint-3'}"
    with pytest.raises(ConfigError) as err:
        train(cfg_for(run_dir, ckpt, "--loss.beta=0.2", "--train.per_device_train_batch_size=1", "--sam.rho=0"))
    message = str(err.value)
    assert message.startswith("train.resume_from_checkpoint: these settings differ from the resumed run's")
    for change in ("loss.beta: 0.1 -> 0.2", "sam.rho: 0.0001 -> 0.0", "train.per_device_train_batch_size: 2 -> 1"):
        assert change in message, message
    assert "train.resume_allow_changes=true" in message and "logging_steps" not in message
    with pytest.raises(ConfigError, match=r"train\.extra\.adam_beta2: \(unset\) -> 0\.99"):
        train(cfg_for(run_dir, ckpt, "--train.extra.adam_beta2=0.99"))
    assert snapshot(run_dir) == before


def test_resume_with_free_or_allowed_changes_continues(run_dir):
    ckpt = f"--train.resume_from_checkpoint={run_dir / 'checkpoint-3'}"
    train(cfg_for(run_dir, ckpt, "--train.logging_steps=2", "--train.save_steps=100", "--train.save_model=false"))
    assert steps(run_dir) == [1, 2, 3, 4, 5, 6]  # trimmed after step 3, then logged again (HF keeps the
    # checkpoint's logging interval on resume)
    train(cfg_for(run_dir, ckpt, "--sam.rho=0", "--train.resume_allow_changes=true", "--train.save_model=false"))
    assert C.load(str(run_dir / "config.yaml")).sam.rho == 0.0  # the resumed run's settings are saved


def test_last_skips_checkpoints_with_broken_weights_or_state(run_dir):
    weights = run_dir / "checkpoint-6" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated (its completion marker would say so too)
    (run_dir / "checkpoint-6" / ".logitsam-complete-0-of-1").unlink()  # only the file check remains
    before = snapshot(run_dir)
    with pytest.raises(ConfigError, match=r"checkpoint-6' is incomplete: missing readable weights"):
        train(cfg_for(run_dir, f"--train.resume_from_checkpoint={run_dir / 'checkpoint-6'}"))
    assert snapshot(run_dir) == before
    state = run_dir / "checkpoint-3" / "trainer_state.json"
    state.write_text('{"global_step": 3}')
    (run_dir / "checkpoint-3" / ".logitsam-complete-0-of-1").unlink()
    before = snapshot(run_dir)
    with pytest.raises(
        ConfigError, match=r"checkpoint-3' is incomplete: missing a trainer_state\.json with the fields"
    ):
        train(cfg_for(run_dir, f"--train.resume_from_checkpoint={run_dir / 'checkpoint-3'}"))
    with pytest.raises(ConfigError, match=r"every checkpoint in .* is incomplete"):
        train(cfg_for(run_dir, "--train.resume_from_checkpoint=last"))
    assert snapshot(run_dir) == before


def test_resuming_a_finished_run_changes_nothing(run_dir):
    """A run whose last checkpoint is at its final step resumes to 'already finished': no step past the end,
    no new checkpoint, no byte of the directory changed (however often it is resumed)."""
    before = {p.relative_to(run_dir): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}
    for _ in range(2):
        out = train(cfg_for(run_dir, "--train.resume_from_checkpoint=last"))
        assert out["metrics"]["already_finished"] is True and out["metrics"]["global_step"] == 6
    after = {p.relative_to(run_dir): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}
    assert after == before


def test_resume_on_edited_data_is_refused_and_changes_nothing(run_dir, tmp_path):
    """Editing the data file between a kill and the resume would continue on other data."""
    data = tmp_path / "data.jsonl"
    shutil.copy(str(FIXTURES / "explicit.jsonl"), data)
    first = run_dir.parent / "first"
    train(cfg_for(first, f"--data.train_files=[{data}]"))
    shutil.rmtree(first / "checkpoint-6")  # as if killed before its last save
    assert json.loads((first / "data_fingerprint.json").read_text())["training"]
    lines = data.read_text().splitlines()
    data.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")  # same rows, other order
    before = snapshot(first)
    with pytest.raises(ConfigError, match="training and evaluation rows differ from those the run started with"):
        train(cfg_for(first, f"--data.train_files=[{data}]", "--train.resume_from_checkpoint=last"))
    assert snapshot(first) == before
    (first / "data_fingerprint.json").unlink()  # removing the fingerprint must not switch the check off
    before = snapshot(first)
    with pytest.raises(ConfigError, match=r"data_fingerprint\.json is missing or unreadable"):
        train(cfg_for(first, f"--data.train_files=[{data}]", "--train.resume_from_checkpoint=last"))
    assert snapshot(first) == before


def test_resume_that_would_train_other_parameters_is_refused_even_with_allow_changes(run_dir):
    """Full weights resumed as LoRA (or the reverse) ended in torch's optimizer 'parameter group' traceback."""
    before = snapshot(run_dir)
    with pytest.raises(ConfigError, match=r"holds a full fine-tuning run; model\.lora_r = 4"):
        train(cfg_for(run_dir, "--model.lora_r=4", "--train.resume_allow_changes=true",
                      f"--train.resume_from_checkpoint={run_dir / 'checkpoint-3'}"))  # fmt: skip
    assert snapshot(run_dir) == before


def test_an_edited_config_yaml_is_not_a_reference_for_the_resume_check(run_dir):
    """The resume check compares against the run's config.yaml; editing it (dpo -> ipo) and resuming with it
    used to continue the run as IPO while config.yaml claimed IPO for the whole run. The checkpoint's marker
    holds the digest config.yaml had when the state was saved."""
    saved = run_dir / "config.yaml"
    saved.write_text(saved.read_text().replace("name: dpo", "name: ipo"))
    before = snapshot(run_dir)
    ckpt = run_dir / "checkpoint-3"
    edited = C.apply_overrides(
        C.load(str(saved)), [f"--train.output_dir={run_dir}", f"--train.resume_from_checkpoint={ckpt}"]
    )
    with pytest.raises(ConfigError, match=r"config\.yaml changed since checkpoint-3 was saved.*resume_allow_changes"):
        train(edited)
    assert snapshot(run_dir) == before


class Killed(Exception):
    """Stands for the process being killed at a chosen point."""


class KillAt(TrainerCallback):
    """Kills the run at the end of ``step`` (before it logs or saves)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Killed(f"killed at step {self.step}")


@pytest.mark.parametrize("last", [6, 5])
def test_a_kill_in_the_final_save_is_finished_by_the_next_resume(tmp_path, monkeypatch, last):
    """Killed after checkpoint-6 (the last step) but before the final save: the resume used to say 'already
    finished' and point at a directory without a model, forever. Finished means the final files were saved
    and still match what was recorded; the resume from the last checkpoint writes them, training no step
    (at step 5, mid-epoch, the Trainer would have trained a step 6)."""
    from logitsam.training.trainer import PreferenceTrainer

    out = tmp_path / "run"
    original = PreferenceTrainer.save_model

    def killed(self, output_dir=None, _internal_call=False):
        if not _internal_call:  # the final save, not a checkpoint's
            raise Killed("killed in the final save")
        return original(self, output_dir, _internal_call)

    monkeypatch.setattr(PreferenceTrainer, "save_model", killed)
    steps_option = f"--train.max_steps={last}"
    with pytest.raises(Killed):
        train(cfg_for(out, steps_option))
    monkeypatch.undo()
    assert (out / f"checkpoint-{last}").is_dir() and not (out / "model.safetensors").exists()
    result = train(cfg_for(out, steps_option, "--train.resume_from_checkpoint=last"))["metrics"]
    assert "already_finished" not in result and result["train_loss"] > 0
    weights = load_file(str(out / "model.safetensors"))
    saved = load_file(str(out / f"checkpoint-{last}" / "model.safetensors"))
    assert weights.keys() == saved.keys() and all(torch.equal(weights[k], saved[k]) for k in weights)
    assert (out / "README.md").exists()
    summaries = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "train_runtime" in r]
    assert len(summaries) == 1  # the interrupted run's summary at step 6 gave way to the resumed one's
    assert steps(out) == list(range(1, last + 1)) and not (out / f"checkpoint-{last + 1}").exists()
    again = train(cfg_for(out, steps_option, "--train.resume_from_checkpoint=last"))["metrics"]
    assert again["already_finished"] is True
    good = (out / "model.safetensors").read_bytes()
    raw = bytearray(good)
    raw[-2] ^= 0x01  # a final model damaged since: not finished any more, saved again from the checkpoint
    (out / "model.safetensors").write_bytes(bytes(raw))
    assert "already_finished" not in train(cfg_for(out, steps_option, "--train.resume_from_checkpoint=last"))["metrics"]
    assert (out / "model.safetensors").read_bytes() == good


def test_a_resume_killed_before_its_first_checkpoint_can_be_resumed_again(run_dir):
    """A resume rewrites config.yaml (resume_from_checkpoint: last); killed before its first checkpoint, every
    later resume was refused ('config.yaml changed since checkpoint-3 was saved') though nobody edited it."""
    straight = {
        r["step"]: r["loss"]
        for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    }
    shutil.rmtree(run_dir / "checkpoint-6")
    with pytest.raises(Killed):
        train(cfg_for(run_dir, "--train.resume_from_checkpoint=last"), callbacks=[KillAt(4)])
    assert C.load(str(run_dir / "config.yaml")).train.resume_from_checkpoint == "last"  # rewritten
    train(cfg_for(run_dir, "--train.resume_from_checkpoint=last"))
    resumed = {
        r["step"]: r["loss"]
        for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    }
    assert resumed == pytest.approx(straight, abs=1e-6)
    saved = run_dir / "config.yaml"  # a hand edit is still refused
    saved.write_text(saved.read_text().replace("name: dpo", "name: ipo"))
    shutil.rmtree(run_dir / "checkpoint-6")
    edited = C.apply_overrides(C.load(str(saved)), ["--train.resume_from_checkpoint=last"])
    with pytest.raises(ConfigError, match=r"config\.yaml changed since checkpoint-3 was saved"):
        train(edited)
