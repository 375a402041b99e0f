"""Checks before a run starts, so a mistake is one ConfigError naming its key — never a traceback
from deep inside transformers after data and models were loaded.

- :func:`check_config`: cross-field and environment checks that per-field rules (config.RULES)
  cannot express: files, installed integrations and optimizer packages, the network a setting
  needs, settings that only make sense together; it builds and returns the run's
  ``transformers.TrainingArguments`` (the only place a run builds them).
- :func:`build_training_args`: the run's ``TrainingArguments``; a value they refuse is named as
  ``train.extra.<key>`` when removing that entry of ``train.extra`` makes them valid.
- :func:`check_optimizer`: the trainer's optimizer and scheduler built once on trial (and
  discarded) before training, so bad optimizer or scheduler settings name ``train.optim``,
  ``train.lr_scheduler_type`` or the ``train.extra`` entry at fault.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
import inspect
import os
import sys
import typing
from collections.abc import Callable
from typing import Any

import torch
from transformers import Trainer, TrainingArguments
from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations
from transformers.trainer_utils import SchedulerType
from transformers.training_args import OptimizerNames

from logitsam.config.paths import BUILTIN_MODELS
from logitsam.config.schema import Config, TrainConfig, validate
from logitsam.errors import ConfigError, one_line
from logitsam.models import check_model_source
from logitsam.training.rundir import check_not_an_input, check_output_dir

# What a refused training setting raises inside transformers / torch (PackageNotFoundError is an ImportError).
TRIAL_ERRORS = (TypeError, ValueError, ImportError)


def training_kwargs(t: TrainConfig, has_eval: bool, checkpointing: bool = False) -> dict[str, Any]:
    """The keyword arguments of the run's TrainingArguments (CPU-safe: bf16 only when asked for on a CPU).

    ``train.bf16: true`` on a CPU runs CPU autocast (bf16 products, float32 weights): correct on any
    CPU, fast only on one with native bf16 (AVX512-BF16 / AMX), so it is never switched on by default.
    """

    on_gpu = torch.cuda.is_available()
    bf16 = t.bf16 if t.bf16 is not None else bool(on_gpu and torch.cuda.is_bf16_supported())
    if bf16 and on_gpu and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.bf16: this GPU does not support bf16 (fp16: train.extra: {fp16: true})")
    kwargs: dict[str, Any] = dict(
        output_dir=t.output_dir,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        warmup_steps=t.warmup_steps,
        lr_scheduler_type=t.lr_scheduler_type,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optim,
        logging_steps=t.logging_steps,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if has_eval and t.eval_steps else "no",
        eval_steps=t.eval_steps,
        seed=t.seed,
        data_seed=t.seed,
        bf16=bf16,
        report_to=t.report_to,
        remove_unused_columns=False,
        use_cpu=not on_gpu,
        dataloader_num_workers=t.dataloader_num_workers,
        ddp_find_unused_parameters=False,
        disable_tqdm=not sys.stderr.isatty(),  # a log file gets the compact log lines, not progress-bar redraws
    )
    if t.gradient_checkpointing or checkpointing:  # renamed in transformers 5 (gradient_ -> activation_)
        params = inspect.signature(TrainingArguments.__init__).parameters
        kwargs["activation_checkpointing" if "activation_checkpointing" in params else "gradient_checkpointing"] = True
    kwargs.update(t.extra)
    if not has_eval:  # nothing to evaluate: drop evaluation switches a recipe may carry
        kwargs["eval_strategy"] = "no"
        kwargs.pop("eval_on_start", None)
    return kwargs


def _without(t: TrainConfig, key: str) -> TrainConfig:
    return dataclasses.replace(t, extra={k: v for k, v in t.extra.items() if k != key})


def _culprit(t: TrainConfig, fails: Callable[[TrainConfig], bool], default: str) -> str:
    """``train.extra.<key>`` whose removal makes ``fails`` false, else ``default``."""
    return next((f"train.extra.{k}" for k in t.extra if not fails(_without(t, k))), default)


_SIMPLE = (bool, int, float, str, type(None))


def _check_extra_types(extra: dict[str, Any]) -> None:
    """Each ``train.extra`` value has a type its TrainingArguments field takes, where the field's type is
    made of plain scalars (transformers otherwise fails deep inside, e.g. ``optim_args: 1.5``)."""
    hints = typing.get_type_hints(TrainingArguments)
    for key, value in extra.items():
        args = typing.get_args(hints.get(key)) or (hints.get(key),)
        allowed = tuple(a for a in args if a in _SIMPLE)
        if len(allowed) < len([a for a in args if not (isinstance(a, type) and issubclass(a, enum.Enum))]):
            continue  # a dict, a list, ...: left to TrainingArguments
        ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
        ok = ok or (float in allowed and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            names = " or ".join("null" if a is type(None) else a.__name__ for a in allowed)
            raise ConfigError(f"train.extra.{key}: {value!r} is not of type {names}")


def build_training_args(t: TrainConfig, has_eval: bool, checkpointing: bool = False) -> Any:
    """transformers.TrainingArguments of the run; a refused value is a ConfigError naming its key."""

    def build(tc: TrainConfig) -> Any:
        return TrainingArguments(**training_kwargs(tc, has_eval, checkpointing))

    try:
        return build(t)
    except TRIAL_ERRORS as e:
        problem = one_line(e, 300)

    def fails(tc: TrainConfig) -> bool:
        try:
            build(tc)
        except TRIAL_ERRORS:
            return True
        return False

    raise ConfigError(f"{_culprit(t, fails, 'train')}: {problem}")


def _trial_optimizer(trainer: Any, args: Any, steps: int) -> tuple[str, str] | None:
    """(key, problem) when the trainer's optimizer or scheduler cannot be built under ``args``."""
    saved = trainer.args, trainer.optimizer, trainer.lr_scheduler, trainer._created_lr_scheduler
    trainer.args, trainer.optimizer, trainer.lr_scheduler = args, None, None
    key = "train.optim"
    try:
        optimizer = trainer.create_optimizer()
        key = "train.lr_scheduler_type"
        trainer.create_scheduler(steps, optimizer=optimizer)
        return None
    except TRIAL_ERRORS as e:
        return key, one_line(e, 300)
    finally:  # the trial objects are dropped: train() builds its own
        trainer.args, trainer.optimizer, trainer.lr_scheduler, trainer._created_lr_scheduler = saved


def check_optimizer(trainer: Any, t: TrainConfig, steps: int, has_eval: bool, checkpointing: bool = False) -> None:
    """Build ``trainer``'s optimizer and scheduler once on trial (and drop them); ConfigError naming
    ``train.optim``, ``train.lr_scheduler_type`` or the ``train.extra`` entry when they fail."""
    if trainer.is_deepspeed_enabled:  # the DeepSpeed config builds its own optimizer and scheduler
        return
    failed = _trial_optimizer(trainer, trainer.args, steps)
    if failed is None:
        return
    key, problem = failed

    def fails(tc: TrainConfig) -> bool:
        try:
            args = build_training_args(tc, has_eval, checkpointing)
        except ConfigError:
            return True
        return _trial_optimizer(trainer, args, steps) is not None

    value = {"train.optim": t.optim, "train.lr_scheduler_type": t.lr_scheduler_type}[key]
    key = _culprit(t, fails, key)
    where = key if key.startswith("train.extra.") else f"{key}: {value!r}"
    raise ConfigError(f"{where}: {problem}")


def _check_report_to(names: list[str]) -> None:

    available = set(get_available_reporting_integrations())
    if importlib.util.find_spec("flytekit") is not None:  # not in transformers' availability list
        available.add("flyte")
    for name in names:
        if name in ("none", "all") or name in available:
            continue
        if name not in INTEGRATION_TO_CALLBACK:
            known = ", ".join(["none", "all", *sorted(INTEGRATION_TO_CALLBACK)])
            raise ConfigError(f"train.report_to: unknown integration {name!r} (known: {known})")
        raise ConfigError(f"train.report_to: {name!r} is not installed (pip install it, or report_to: [none])")


def _check_optimizer_package(args: Any, optim: str) -> None:
    """ConfigError when ``optim`` needs a package that is not installed (bitsandbytes, galore, ...)."""

    try:
        Trainer.get_optimizer_cls_and_kwargs(args)
    except ImportError as e:
        raise ConfigError(f"train.optim: {optim!r} needs a package that is not installed: {one_line(e, 300)}") from None
    except TRIAL_ERRORS:  # e.g. needs the model: checked with it before training (check_optimizer)
        pass


def expects_eval(cfg: Config) -> bool:
    """Whether the configured data holds evaluation rows (files given, or a fraction held out)."""
    return bool(cfg.data.eval_files) or cfg.data.eval_fraction > 0


def _check_training_args(cfg: Config) -> Any:
    t = cfg.train
    ds = t.extra.get("deepspeed")
    if isinstance(ds, str) and not ds.lstrip().startswith("{") and not os.path.isfile(ds):
        raise ConfigError(f"train.extra.deepspeed: {ds!r} not found (a DeepSpeed JSON config file)")
    if t.extra.get("push_to_hub") and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ConfigError("train.extra.push_to_hub: needs a network, but HF_HUB_OFFLINE=1 is set")
    args = build_training_args(t, expects_eval(cfg), wants_checkpointing(cfg))
    _check_optimizer_package(args, t.optim)
    return args


def wants_checkpointing(cfg: Config) -> bool:
    """Activation checkpointing asked for (``model.`` or ``train.gradient_checkpointing``)."""
    return bool(cfg.model.gradient_checkpointing or cfg.train.gradient_checkpointing)


def check_config(cfg: Config) -> Any:
    """Every field's rule (``config.validate``: configs built in code too), then the cross-field and
    environment checks that per-field rules cannot express. Returns the run's
    ``transformers.TrainingArguments`` (built here, once, for ``expects_eval(cfg)``)."""
    validate(cfg, "config")
    d, t, m, sam = cfg.data, cfg.train, cfg.model, cfg.sam
    if not d.train_files:
        raise ConfigError("data.train_files: give at least one training file")
    if d.max_prompt_length >= d.max_length:
        raise ConfigError(
            f"data.max_prompt_length: {d.max_prompt_length} must be < data.max_length ({d.max_length}), "
            "or no room is left for the responses"
        )
    if sam.adaptive and sam.mode == "full":
        raise ConfigError("sam.adaptive: adaptive ε is a logits-SAM option (sam.mode logits); full SAM has none")
    if sam.adaptive and sam.method == "gram":
        raise ConfigError("sam.adaptive: needs the head weight elementwise; use sam.method weight, chunked or auto")
    if m.dtype == "float16" and not torch.cuda.is_available():
        raise ConfigError(
            "model.dtype: float16 weights on a CPU train without float32 master weights and diverge; "
            "use float32 or bfloat16"
        )
    if m.gguf_file and m.name_or_path in BUILTIN_MODELS:
        raise ConfigError(
            f"model.gguf_file: {m.gguf_file!r} names a file inside a model directory, but model.name_or_path "
            f"is the built-in {m.name_or_path!r}; remove gguf_file"
        )
    schedulers = [s.value for s in SchedulerType]
    if t.lr_scheduler_type not in schedulers:
        raise ConfigError(f"train.lr_scheduler_type: {t.lr_scheduler_type!r} is not one of {', '.join(schedulers)}")
    if t.optim not in [o.value for o in OptimizerNames]:
        raise ConfigError(f"train.optim: unknown optimizer {t.optim!r} (see transformers' OptimizerNames)")
    _check_report_to(t.report_to)
    fields = inspect.signature(TrainingArguments.__init__).parameters
    unknown = sorted(k for k in t.extra if k not in fields)
    if unknown:
        raise ConfigError(f"train.extra.{unknown[0]}: not a transformers.TrainingArguments field")
    _check_extra_types(t.extra)
    check_model_source(m.name_or_path, "model.name_or_path", m.gguf_file)
    if m.ref_name_or_path:
        check_model_source(m.ref_name_or_path, "model.ref_name_or_path", m.gguf_file)
    check_output_dir(t.output_dir)
    models = [("model.name_or_path", m.name_or_path), ("model.ref_name_or_path", m.ref_name_or_path)]
    check_not_an_input(t.output_dir, models)
    resume = t.resume_from_checkpoint
    if isinstance(resume, str) and resume.strip().lower() != "last" and not os.path.exists(resume):
        raise ConfigError(f"train.resume_from_checkpoint: {resume!r} not found")
    return _check_training_args(cfg)
