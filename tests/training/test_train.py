"""End-to-end training on the tiny random model: metrics, resume, divergence, references, SAM modes."""

import json
import math

import pytest
import torch

from conftest import FIXTURES, tiny_config
from logitsam.config import schema as C
from logitsam.core.losses import dpo
from logitsam.core.registry import LOSSES, LossSpec
from logitsam.training.run import train
from logitsam.training.trainer import TrainingDiverged

pytestmark = pytest.mark.slow  # trains or launches processes: `pytest -m 'not slow'` skips it


def cfg_for(tmp_path, *overrides):
    return tiny_config(tmp_path, *overrides, quiet=False)


def losses(out_dir):
    return [r["loss"] for r in map(json.loads, open(f"{out_dir}/metrics.jsonl")) if "loss" in r]


def records(out_dir):
    return [json.loads(line) for line in open(f"{out_dir}/metrics.jsonl")]


def test_tiny_run_logs_everything(tmp_path):
    train(cfg_for(tmp_path))
    recs = [r for r in records(tmp_path) if "loss" in r]
    assert len(recs) == 6
    first = recs[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-3)  # policy == reference at step 1 ...
    assert first["logps/chosen_drift"] == 0.0 and first["rewards/margins"] == 0.0  # ... exactly
    for key in (
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
        "logps/rejected_drift",
        "probs/top_token",
        "sam/loss_pre",
        "sam/loss_post",
        "sam/eps_norm",
    ):
        assert key in first, key
    assert first["sam/eps_norm"] == pytest.approx(1e-4)
    assert first["sam/loss_post"] >= first["sam/loss_pre"]
    assert C.load(str(tmp_path / "config.yaml")).sam.rho == 1e-4
    assert (tmp_path / "model.safetensors").exists()


def test_resume_gives_the_same_losses(tmp_path):
    train(cfg_for(tmp_path / "straight"))  # 6 steps, checkpoint at 3
    ckpt = tmp_path / "straight" / "checkpoint-3"
    train(cfg_for(tmp_path / "resumed", f"--train.resume_from_checkpoint={ckpt}"))
    straight = [r for r in records(tmp_path / "straight") if "loss" in r]
    resumed = [r for r in records(tmp_path / "resumed") if "loss" in r]
    assert [r["step"] for r in resumed] == [4, 5, 6]
    for a, b in zip(straight[3:], resumed, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-6


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from logitsam.training.trainer import PreferenceTrainer

    state = {"step": 0}
    original = PreferenceTrainer.compute_loss

    def tracking(self, *a, **k):
        state["step"] = self.state.global_step + 1
        return original(self, *a, **k)

    def poisoned(inp, **hp):
        out = dpo(inp, **hp)
        return (
            out if state["step"] < 3 else type(out)(out.losses * float("nan"), out.chosen_rewards, out.rejected_rewards)
        )

    monkeypatch.setattr(PreferenceTrainer, "compute_loss", tracking)
    monkeypatch.setitem(
        LOSSES, "poisoned", LossSpec("poisoned", poisoned, True, False, {"beta": 0.1, "label_smoothing": 0.0})
    )
    cfg = cfg_for(tmp_path, "--loss.name=poisoned", "--sam.rho=0", "--train.save_steps=2")
    with pytest.raises(TrainingDiverged, match="at step 3") as err:
        train(cfg)
    assert f"{tmp_path / 'checkpoint-2'} (step 2)" in str(err.value)  # names the checkpoint that exists
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoint-2")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_divergence_message_never_points_at_a_missing_or_broken_checkpoint(tmp_path):
    from safetensors.torch import save_file

    from logitsam.training.trainer import last_good_state

    assert "no checkpoint was saved" in last_good_state(str(tmp_path))
    (tmp_path / "checkpoint-4").mkdir()
    save_file({"w": torch.tensor([1.0, float("nan")])}, tmp_path / "checkpoint-4" / "model.safetensors")
    assert "no checkpoint in" in last_good_state(str(tmp_path))
    (tmp_path / "checkpoint-2").mkdir()
    save_file({"w": torch.tensor([1.0, 2.0])}, tmp_path / "checkpoint-2" / "model.safetensors")
    assert "checkpoint-2 (step 2)" in last_good_state(str(tmp_path))


def test_precomputed_reference_matches_model_reference(tmp_path, monkeypatch):
    from logitsam.training import run as run_mod

    monkeypatch.setenv("LOGITSAM_CACHE", str(tmp_path / "cache"))
    train(cfg_for(tmp_path / "model", "--sam.rho=0"))

    def no_second_model(*args, **kwargs):
        raise AssertionError("the policy before its first step is the reference: nothing more to load")

    monkeypatch.setattr(run_mod, "load_reference", no_second_model)
    train(cfg_for(tmp_path / "pre", "--sam.rho=0", "--loss.reference=precomputed"))
    assert list((tmp_path / "cache" / "ref_logps").glob("*.pt"))
    a, b = losses(tmp_path / "model"), losses(tmp_path / "pre")
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 1e-5


def test_saved_config_is_the_resolved_run(tmp_path):

    seen = {}

    def grab(trainer):
        steps = trainer.state.max_steps
        seen.update(max_steps=steps, warmup=trainer.args.get_warmup_steps(steps), epochs=trainer.state.num_train_epochs)

    overrides = ["--train.warmup_steps=0.5", "--train.save_steps=100", "--train.save_model=false"]
    out = train(cfg_for(tmp_path / "e", "--train.max_steps=-1", "--train.num_train_epochs=2", *overrides), on_end=grab)
    per_epoch = math.ceil(out["metrics"]["rows_train"] / 2)  # batch 2, one process, no accumulation
    saved = C.load(str(tmp_path / "e" / "config.yaml"))
    assert seen["max_steps"] == 2 * per_epoch and saved.train.max_steps == -1 and saved.train.num_train_epochs == 2.0
    assert saved.train.warmup_steps == seen["warmup"] == math.ceil(0.5 * seen["max_steps"])  # a step count now
    assert (saved.model.dtype, saved.train.bf16, saved.train.gradient_checkpointing) == ("float32", False, False)
    assert saved.data.train_files == [str(FIXTURES / "explicit.jsonl")]

    overrides += ["--train.max_steps=5", "--model.gradient_checkpointing=true"]
    train(cfg_for(tmp_path / "s", *overrides), on_end=grab)
    saved = C.load(str(tmp_path / "s" / "config.yaml"))
    assert saved.train.num_train_epochs == pytest.approx(5 / per_epoch)  # what max_steps=5 implies
    assert seen["epochs"] == math.ceil(5 / per_epoch)  # transformers counts started epochs
    assert saved.train.warmup_steps == seen["warmup"] == 3  # ceil(0.5 * 5)
    assert saved.train.gradient_checkpointing is True  # model.gradient_checkpointing switches it on


def test_lora_reference_is_the_policy_without_adapters(tmp_path):
    train(cfg_for(tmp_path, "--model.lora_r=4", "--train.max_steps=2"))
    first = records(tmp_path)[0]
    assert first["logps/chosen_drift"] == 0.0  # LoRA starts as the identity: policy == reference
    assert (tmp_path / "adapter_model.safetensors").exists()


def test_full_sam_and_reference_free_losses(tmp_path):
    train(cfg_for(tmp_path / "full", "--sam.mode=full", "--sam.rho=0.05", "--train.max_steps=2"))
    rec = records(tmp_path / "full")[0]
    assert rec["sam/eps_norm"] == pytest.approx(0.05) and rec["sam/loss_post"] > rec["sam/loss_pre"]
    train(cfg_for(tmp_path / "simpo", "--loss.name=simpo", "--loss.beta=2.0", "--train.max_steps=2"))
    rec = records(tmp_path / "simpo")[0]
    assert "logps/chosen_drift" not in rec and "sam/loss_pre" in rec


@pytest.mark.parametrize("fixture", ["hh.jsonl", "ultrafeedback.jsonl"])
def test_other_formats_train(tmp_path, fixture):
    out = train(
        cfg_for(
            tmp_path,
            f"--data.train_files=[{FIXTURES / fixture}]",
            "--train.max_steps=2",
            "--loss.name=spo_target",
            "--data.eval_fraction=0",
        )
    )
    assert out["metrics"]["rows_train"] == 4


def test_kill_mid_save_resumes_from_the_previous_checkpoint(tmp_path):
    """A run killed while writing checkpoint-6 (no trainer_state.json, a torn optimizer.pt, no marker)
    after logging step 6: 'last' resumes from checkpoint-3, the log is trimmed so every step appears
    once, and the resumed steps reproduce the uninterrupted losses."""
    from logitsam.errors import ConfigError
    from logitsam.training.commit import MARKER

    out = tmp_path / "run"
    train(cfg_for(out))
    straight = {r["step"]: r["loss"] for r in records(out) if "loss" in r}
    assert (out / "checkpoint-3" / f"{MARKER}-0-of-1").exists()
    with pytest.raises(ConfigError, match="holds a previous run"):  # same dir, no resume: refused
        train(cfg_for(out))
    ckpt = out / "checkpoint-6"
    (ckpt / "trainer_state.json").unlink()
    (ckpt / f"{MARKER}-0-of-1").unlink()
    opt = (ckpt / "optimizer.pt").read_bytes()
    (ckpt / "optimizer.pt").write_bytes(opt[: len(opt) // 2])
    # both noticed: the torn optimizer state (its zip archive) and the missing trainer state
    with pytest.raises(
        ConfigError, match=r"checkpoint-6' is incomplete: missing .*optimizer\.pt is truncated.*trainer_state\.json"
    ):
        train(cfg_for(out, f"--train.resume_from_checkpoint={ckpt}"))
    train(cfg_for(out, "--train.resume_from_checkpoint=last"))
    resumed = [r for r in records(out) if "loss" in r]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    for r in resumed[3:]:
        assert abs(r["loss"] - straight[r["step"]]) <= 1e-6
    # the summary's mean covers all 6 steps (HF's own averaged only the 3 resumed ones)
    summary = [r for r in records(out) if "train_loss" in r]
    assert len(summary) == 1
    assert abs(summary[0]["train_loss"] - sum(straight.values()) / 6) <= 1e-6
    assert not (out / ".logitsam.lock").exists()


@pytest.mark.parametrize("logging_steps", [2, 4])
def test_a_resume_logs_the_intervals_of_an_uninterrupted_run(tmp_path, logging_steps):
    """logging_steps 2, save_steps 3, killed after checkpoint-3: the resumed run's record at step 4 averaged
    step 4 alone while claiming steps 3-4, and the summary's train_loss differed from the uninterrupted run's.
    With logging_steps 4 the records do not cover step 6: the summary comes from the loss sum, carried too."""
    from test_resume import KillAt, Killed

    every = (f"--train.logging_steps={logging_steps}", "--train.save_steps=3")
    train(cfg_for(tmp_path / "straight", *every))
    with pytest.raises(Killed):
        train(cfg_for(tmp_path / "cut", *every), callbacks=[KillAt(4)])
    train(cfg_for(tmp_path / "cut", *every, "--train.resume_from_checkpoint=last"))
    straight, cut = records(tmp_path / "straight"), records(tmp_path / "cut")
    assert [sorted(r) for r in cut] == [sorted(r) for r in straight]
    for a, b in zip(straight, cut, strict=True):
        for key in (k for k in a if not k.endswith(("runtime", "per_second", "flos"))):  # clocks, not results
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["step"], key)


def test_lora_sft_then_full_training_trains_and_saves_a_full_model(tmp_path):
    """A LoRA SFT directory as the base of a full fine-tune loaded as a PeftModel: only the SFT adapters
    trained, adapters saved, the card said full fine-tuning. Its adapters are merged into a plain model
    first; new LoRA adapters on it start from the merged model too (their reference is the SFT model)."""
    from logitsam.training.sft import sft

    sft_dir = tmp_path / "sft"
    sft(cfg_for(sft_dir, "--model.lora_r=4", "--train.max_steps=2", "--train.learning_rate=0.05"))
    assert (sft_dir / "adapter_config.json").exists()
    seen = {}

    def grab(trainer):
        params = list(trainer.model.parameters())
        seen.update(peft=hasattr(trainer.model, "peft_config"), all=sum(p.numel() for p in params))
        seen["trainable"] = sum(p.numel() for p in params if p.requires_grad)

    full = tmp_path / "full"
    train(cfg_for(full, f"--model.name_or_path={sft_dir}", "--train.max_steps=2"), on_end=grab)
    assert not seen["peft"] and seen["trainable"] == seen["all"]
    assert (full / "model.safetensors").exists() and not (full / "adapter_config.json").exists()
    assert "| LoRA rank | – (full fine-tuning) |" in (full / "README.md").read_text()
    assert records(full)[0]["logps/chosen_drift"] == 0.0  # the reference is the same merged SFT model
    lora = tmp_path / "lora"
    train(cfg_for(lora, f"--model.name_or_path={sft_dir}", "--model.lora_r=4", "--train.max_steps=2"), on_end=grab)
    assert seen["peft"] and seen["trainable"] < seen["all"]
    assert records(lora)[0]["logps/chosen_drift"] == 0.0  # the SFT model, not the tiny base, is the reference
    assert records(lora)[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
