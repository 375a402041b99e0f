"""Build everything a training run needs from a Config and run it (the body of ``logitsam train``)."""

from __future__ import annotations

import copy
import importlib.util
import inspect
import logging
import math
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from . import config as config_mod
from .batching import DropCounts, PreferenceCollator, tokenize_examples
from .checkpoints import AtomicCheckpoints, checkpoint_step, resolve_resume, trim_metrics
from .config import Config, TrainConfig
from .data import load_examples
from .errors import ConfigError
from .losses import HyperparameterError, LossSpec, get_loss, resolve_hparams
from .models import DTYPES, apply_lora, check_model_source, load_model, load_reference, load_tokenizer
from .reference import attach_reference_logps
from .rundir import check_output_dir, claim, is_main_process
from .sam import METHODS

log = logging.getLogger(__name__)


def build_training_args(t: TrainConfig, has_eval: bool, checkpointing: bool = False) -> Any:
    """transformers.TrainingArguments with CPU-safe defaults (no bf16 without a GPU).

    checkpointing: recompute activations also when ``t.gradient_checkpointing`` is unset
    (``model.gradient_checkpointing``).
    """
    from transformers import TrainingArguments

    on_gpu = torch.cuda.is_available()
    bf16 = t.bf16 if t.bf16 is not None else bool(on_gpu and torch.cuda.is_bf16_supported())
    if bf16 and not on_gpu:
        raise ConfigError("train.bf16: bf16 mixed precision needs a GPU that supports it")
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
    )
    if t.gradient_checkpointing or checkpointing:  # renamed in transformers 5 (gradient_ -> activation_)
        params = inspect.signature(TrainingArguments.__init__).parameters
        kwargs["activation_checkpointing" if "activation_checkpointing" in params else "gradient_checkpointing"] = True
    kwargs.update(t.extra)
    if not has_eval:  # nothing to evaluate: drop evaluation switches a recipe may carry
        kwargs["eval_strategy"] = "no"
        kwargs.pop("eval_on_start", None)
    try:
        return TrainingArguments(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"train: {e}") from None


# YAML 1.1 (PyYAML) reads 1e-4 — an exponent without a dot — as a string; config.py reads such
# strings as numbers for float fields, and loss.params (a free mapping) gets the same treatment.
_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def loss_setup(cfg: Config) -> tuple[LossSpec, dict[str, Any]]:
    """The loss spec and its validated hyperparameters (``loss.beta`` is shorthand for params.beta).

    Errors name the config key: ``loss.name``, ``loss.beta`` or ``loss.params.<key>``.
    """
    try:
        spec = get_loss(cfg.loss.name)
    except ValueError as e:
        raise ConfigError(f"loss.name: {e}") from None
    params = {
        k: float(v) if isinstance(v, str) and _YAML11_FLOAT.fullmatch(v.strip()) else v
        for k, v in cfg.loss.params.items()
    }
    if cfg.loss.beta is not None:
        if "beta" not in spec.defaults:
            raise ConfigError(f"loss.beta: loss {spec.name!r} has no beta (its hyperparameters: {_known(spec)})")
        params["beta"] = cfg.loss.beta
    try:
        return spec, resolve_hparams(spec, params)
    except HyperparameterError as e:
        key = "loss.beta" if e.key == "beta" and cfg.loss.beta is not None else f"loss.params.{e.key}"
        raise ConfigError(f"{key}: {e}") from None


def _known(spec: LossSpec) -> str:
    return ", ".join(sorted(spec.defaults)) or "none"


def _check_report_to(names: list[str]) -> None:
    from transformers.integrations.integration_utils import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

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


def check_config(cfg: Config) -> None:
    """Cross-field and environment checks that per-field rules (config.RULES) cannot express."""
    from transformers import TrainingArguments
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    d, t = cfg.data, cfg.train
    if not d.train_files:
        raise ConfigError("data.train_files: give at least one training file")
    if d.max_prompt_length >= d.max_length:
        raise ConfigError(
            f"data.max_prompt_length: {d.max_prompt_length} must be < data.max_length ({d.max_length}), "
            "or no room is left for the responses"
        )
    if cfg.sam.mode not in ("logits", "full"):
        raise ConfigError(f"sam.mode: {cfg.sam.mode!r} is not one of logits, full")
    if cfg.sam.method not in METHODS:
        raise ConfigError(f"sam.method: {cfg.sam.method!r} is not one of {', '.join(METHODS)}")
    if cfg.sam.adaptive and cfg.sam.method == "gram":
        raise ConfigError("sam.adaptive: needs the head weight elementwise; use sam.method weight, chunked or auto")
    if cfg.loss.reference not in ("model", "precomputed", "none"):
        raise ConfigError(f"loss.reference: {cfg.loss.reference!r} is not one of model, precomputed, none")
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
    check_model_source(cfg.model.name_or_path, "model.name_or_path", cfg.model.gguf_file)
    if cfg.model.ref_name_or_path:
        check_model_source(cfg.model.ref_name_or_path, "model.ref_name_or_path", cfg.model.gguf_file)
    check_output_dir(t.output_dir)
    resume = t.resume_from_checkpoint
    if isinstance(resume, str) and resume.strip().lower() != "last" and not os.path.exists(resume):
        raise ConfigError(f"train.resume_from_checkpoint: {resume!r} not found")


@dataclass
class Prepared:
    tokenizer: Any
    train_rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]]
    drops: DropCounts


def prepare_data(cfg: Config, tokenizer: Any) -> Prepared:
    """Load, validate and tokenize train/eval data; hold out ``eval_fraction`` if no eval files."""
    d = cfg.data
    train = load_examples(d.train_files, d.format)
    evals = load_examples(d.eval_files, d.format) if d.eval_files else []
    if not evals and d.eval_fraction > 0:
        order = list(range(len(train)))
        random.Random(d.seed).shuffle(order)
        k = max(1, int(len(train) * d.eval_fraction))
        evals, train = [train[i] for i in order[:k]], [train[i] for i in sorted(order[k:])]
    train_rows, drops = tokenize_examples(tokenizer, train, d.max_length, d.max_prompt_length)
    eval_rows, eval_drops = tokenize_examples(tokenizer, evals, d.max_length, d.max_prompt_length)
    drops.prompt_too_long += eval_drops.prompt_too_long
    drops.identical_responses += eval_drops.identical_responses
    if not train_rows:
        raise ConfigError(f"data.train_files: no usable rows after tokenization ({drops.total} dropped)")
    return Prepared(tokenizer, train_rows, eval_rows, drops)


def train(cfg: Config, on_end: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Run training as configured; returns ``{"metrics": ...}`` (final metrics and data counts).

    ``on_end(trainer)`` runs on every rank after training, before distributed teardown.
    """
    check_config(cfg)
    spec, params = loss_setup(cfg)
    t = cfg.train
    resuming = t.resume_from_checkpoint not in (None, False)
    with claim(t.output_dir, resuming=resuming, overwrite=t.overwrite_output_dir):
        resume = resolve_resume(t.output_dir, t.resume_from_checkpoint, allow_incomplete=t.resume_allow_incomplete)
        if is_main_process():
            step = checkpoint_step(resume) if resume else None
            if step is not None:  # the interrupted run logged steps the resumed one logs again
                trim_metrics(t.output_dir, step)
        return _train(cfg, spec, params, resume, on_end)


def resolved_config(cfg: Config, args: Any, model: Any, n_train: int) -> Config:
    """A copy of ``cfg`` as the run really uses it (saved as ``output_dir/config.yaml``).

    Data and model paths absolute; ``model.dtype`` the weights' dtype ('auto' resolved);
    ``train.bf16`` and ``train.gradient_checkpointing`` as switched on or off; ``train.warmup_steps``
    a step count (a fraction resolved against the total steps); ``train.num_train_epochs`` the
    epochs that ``max_steps`` implies, when it is set. Reloading it reproduces the run.
    """
    out = config_mod.resolve_paths(copy.deepcopy(cfg), os.getcwd())
    dtype = next(model.parameters()).dtype
    out.model.dtype = next((k for k, v in DTYPES.items() if v == dtype), str(dtype).removeprefix("torch."))
    t = out.train
    t.bf16 = bool(args.bf16)
    t.gradient_checkpointing = bool(getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing)
    per_step = args.per_device_train_batch_size * args.world_size
    batches = n_train // per_step if args.dataloader_drop_last else math.ceil(n_train / per_step)
    steps_per_epoch = max(math.ceil(batches / args.gradient_accumulation_steps), 1)  # as transformers.Trainer
    if args.max_steps > 0:
        max_steps = args.max_steps
        t.num_train_epochs = max_steps / steps_per_epoch
    else:
        max_steps = math.ceil(args.num_train_epochs * steps_per_epoch)
    t.warmup_steps = float(args.get_warmup_steps(max_steps))
    return out


def _train(
    cfg: Config, spec: LossSpec, params: dict[str, Any], resume: str | None, on_end: Callable[[Any], None] | None
) -> dict[str, Any]:
    from .trainer import PreferenceTrainer

    tokenizer = load_tokenizer(cfg.model)
    data = prepare_data(cfg, tokenizer)
    checkpointing = bool(cfg.model.gradient_checkpointing or cfg.train.gradient_checkpointing)
    args = build_training_args(cfg.train, has_eval=bool(data.eval_rows), checkpointing=checkpointing)
    model = load_model(cfg.model, vocab_size=len(tokenizer))  # tiny-random: fixed init, the 'pretrained' model
    if checkpointing:
        model.config.use_cache = False
    if is_main_process():
        resolved = resolved_config(cfg, args, model, len(data.train_rows))
        config_mod.save(resolved, os.path.join(cfg.train.output_dir, "config.yaml"))
    ref_model = None
    if spec.needs_reference:
        if cfg.loss.reference == "none":
            raise ConfigError(f"loss.reference: loss {spec.name!r} needs a reference (model or precomputed)")
        ref_name = cfg.model.ref_name_or_path or cfg.model.name_or_path
        if cfg.loss.reference == "precomputed":
            # the policy before its first step is the reference unless another one is named: no second copy
            ref = model if ref_name == cfg.model.name_or_path else load_reference(cfg.model, model)
            ref = (ref if ref is not None else model).to(args.device)  # as the trainer will run it
            amp = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None
            name = os.path.basename(os.path.normpath(cfg.train.output_dir))
            for rows in (data.train_rows, data.eval_rows):
                if rows:
                    attach_reference_logps(
                        ref, f"{ref_name}:{cfg.model.dtype}", rows, tokenizer.pad_token_id, autocast=amp, desc=name
                    )
            del ref  # freed when it is a separate model: the batches carry the reference log-probs now
        else:
            ref_model = load_reference(cfg.model, model)
    model = apply_lora(model, cfg.model)
    trainer = PreferenceTrainer(
        model=model,
        args=args,
        train_dataset=data.train_rows,
        eval_dataset=data.eval_rows or None,
        data_collator=PreferenceCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        loss_spec=spec,
        loss_params=params,
        sam=cfg.sam,
        ref_model=ref_model,
        print_logs=cfg.train.print_logs,
        callbacks=[AtomicCheckpoints()],
    )
    result = trainer.train(resume_from_checkpoint=resume)
    if cfg.train.save_model:
        trainer.save_model(cfg.train.output_dir)
    metrics = dict(result.metrics)
    if data.eval_rows:
        metrics.update(final_evaluation(trainer))
    metrics["rows_train"] = len(data.train_rows)
    metrics["rows_eval"] = len(data.eval_rows)
    metrics["rows_dropped"] = data.drops.total
    if on_end is not None:
        on_end(trainer)
    _teardown(trainer)
    return {"metrics": metrics}


def final_evaluation(trainer: Any) -> dict[str, float]:
    """The evaluation metrics at the last step: the ones logged there when the schedule already
    evaluated it (``eval_steps`` divides the step count), else one ``trainer.evaluate()``."""
    last = next((r for r in reversed(trainer.state.log_history) if "eval_loss" in r), None)
    if last is not None and last.get("step") == trainer.state.global_step:
        return {k: v for k, v in last.items() if k.startswith("eval_")}
    return trainer.evaluate()


def _teardown(trainer: Any) -> None:
    """Free the wrapped model/optimizer, then end the process group: DDP processes otherwise may
    abort at exit ('terminate called without an active exception')."""
    import gc

    import torch.distributed as dist

    distributed = trainer.accelerator.num_processes > 1
    trainer.accelerator.free_memory()
    del trainer
    gc.collect()
    if distributed and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
