"""One staged recipe for a training run, shared by ``logitsam train`` and ``logitsam sft`` (the way
torchtune's recipes read): a :class:`Recipe` says what its stages build, :func:`run_recipe` runs them
in one order for both.

    check config (TrainingArguments built once)  →  the recipe's own checks  →  claim the run dir
    →  setup_data  →  setup_model  →  resolved config, resume checks  →  setup_reference  →  LoRA
    →  setup_trainer  →  optimizer on trial  →  begin writing  →  train  →  save  →  finish  →  release

The arguments are built before the data are read: the data hold evaluation rows exactly when the config
promises them (an empty evaluation file, and one whose rows all drop, are refused).
Everything that can fail on a user's input fails before "begin writing" (lifecycle.py), so a start that
fails loses nothing already written.
"""

from __future__ import annotations

import copy
import gc
import logging
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from logitsam.config import schema as config_mod
from logitsam.config.schema import Config
from logitsam.errors import ConfigError
from logitsam.lora import apply_lora, check_lora_targets
from logitsam.losses import loss_import_paths
from logitsam.models import DTYPES, load_model, load_tokenizer
from logitsam.training.lifecycle import RunLifecycle
from logitsam.training.preflight import check_config, check_optimizer, wants_checkpointing
from logitsam.training.resume import data_fingerprint

log = logging.getLogger(__name__)


@dataclass
class Data:
    """Tokenized rows of a run and what tokenization dropped."""

    train_rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]]
    dropped: int

    def counts(self) -> dict[str, int]:
        return {"rows_train": len(self.train_rows), "rows_eval": len(self.eval_rows), "rows_dropped": self.dropped}


class Recipe:
    """The stages of one kind of run. ``kind`` names it in the data fingerprint and the model card."""

    kind = "train"

    def check(self, cfg: Config) -> None:
        """Checks of this kind of run, before the run directory is claimed."""

    def setup_data(self, cfg: Config, tokenizer: Any) -> Data:
        raise NotImplementedError

    def setup_model(self, cfg: Config, tokenizer: Any, args: Any) -> Any:
        """The model to train (LoRA is applied after the reference is set up, from the plain model)."""
        model = load_model(cfg.model, vocab_size=len(tokenizer), merge_adapters=True)  # tiny-random: fixed init
        check_lora_targets(model, cfg.model)
        if wants_checkpointing(cfg):
            model.config.use_cache = False
        return model

    def setup_reference(self, cfg: Config, model: Any, args: Any, tokenizer: Any, data: Data) -> Any:
        """A reference model for the trainer, or None (no reference, or one folded into the data)."""
        return None

    def setup_trainer(
        self, cfg: Config, model: Any, args: Any, tokenizer: Any, data: Data, reference: Any, callbacks: list[Any]
    ) -> Any:
        raise NotImplementedError


def run_recipe(
    recipe: Recipe,
    cfg: Config,
    callbacks: Sequence[Any] = (),
    on_end: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Run ``recipe`` as configured; returns ``{"metrics": ...}`` (final metrics and data counts).

    ``callbacks``: extra ``transformers.TrainerCallback`` instances; ``on_end(trainer)`` runs on every
    rank after training, before distributed teardown.
    """
    args = check_config(cfg)
    recipe.check(cfg)
    with RunLifecycle(cfg) as run:
        tokenizer = load_tokenizer(cfg.model)
        data = recipe.setup_data(cfg, tokenizer)
        model = recipe.setup_model(cfg, tokenizer, args)
        n_train = len(data.train_rows)
        resolved = resolved_config(cfg, args, model, n_train)
        fingerprints = {"kind": recipe.kind, "training": data_fingerprint(data.train_rows)}
        fingerprints["evaluation"] = data_fingerprint(data.eval_rows)
        steps = total_steps(args, n_train)[0]
        finished = run.check_resume(resolved, fingerprints, steps)
        if finished is not None:
            return finished
        reference = recipe.setup_reference(cfg, model, args, tokenizer, data)
        model = apply_lora(model, cfg.model)
        trainer = recipe.setup_trainer(cfg, model, args, tokenizer, data, reference, list(callbacks))
        check_optimizer(trainer, cfg.train, steps, bool(data.eval_rows), wants_checkpointing(cfg))
        run.begin(resolved, fingerprints)
        result = trainer.train(resume_from_checkpoint=run.resume)
        run.save_model(trainer)
        metrics = dict(result.metrics)
        if trainer.eval_dataset is not None:
            metrics.update(final_evaluation(trainer))
        metrics.update(data.counts())
        run.finish(resolved, metrics, trainer.state.global_step, recipe.kind)
        if on_end is not None:
            on_end(trainer)
        teardown(trainer)
        return {"metrics": metrics}


def split_eval(train: list, evals: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, eval) examples: ``evals`` when given, else ``fraction`` of ``train`` held out at random."""
    if evals or fraction <= 0:
        return train, evals
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    k = max(1, int(len(train) * fraction))
    if k >= len(train):
        raise ConfigError(
            f"data.eval_fraction: {fraction:g} of {len(train)} training rows holds out all of them "
            "(at least one is held out); lower it, add rows, or give data.eval_files"
        )
    return [train[i] for i in sorted(order[k:])], [train[i] for i in order[:k]]


def check_eval_rows(cfg: Config, examples: int, rows: int) -> None:
    """Evaluation asked for must run: ConfigError when every evaluation example was dropped by
    tokenization (it would silently never evaluate); a warning when eval_steps is set without any
    evaluation data."""
    d = cfg.data
    if examples and not rows:
        key = "data.eval_files" if d.eval_files else "data.eval_fraction"
        raise ConfigError(
            f"{key}: none of the {examples} evaluation rows is usable after tokenization (prompt longer than "
            f"data.max_prompt_length={d.max_prompt_length}, or identical responses), so evaluation would never run"
        )
    if not examples and cfg.train.eval_steps:
        log.warning(
            "train.eval_steps=%s, but there is no evaluation data (data.eval_files empty, data.eval_fraction 0): "
            "no evaluation runs", cfg.train.eval_steps,
        )  # fmt: skip


def check_train_rows(rows: list, dropped: int) -> None:
    if not rows:
        raise ConfigError(f"data.train_files: no usable rows after tokenization ({dropped} dropped)")


def total_steps(args: Any, n_train: int) -> tuple[int, int]:
    """(optimizer steps of the run, steps per epoch), as transformers.Trainer counts them."""
    per_step = args.per_device_train_batch_size * args.world_size
    batches = n_train // per_step if args.dataloader_drop_last else math.ceil(n_train / per_step)
    steps_per_epoch = max(math.ceil(batches / args.gradient_accumulation_steps), 1)
    if args.max_steps > 0:
        return args.max_steps, steps_per_epoch
    return math.ceil(args.num_train_epochs * steps_per_epoch), steps_per_epoch


def resolved_config(cfg: Config, args: Any, model: Any, n_train: int) -> Config:
    """A copy of ``cfg`` as the run really uses it (saved as ``output_dir/config.yaml``).

    Data and model paths absolute; ``model.dtype`` the weights' dtype ('auto' resolved);
    ``train.bf16`` and ``train.gradient_checkpointing`` as switched on or off; ``train.warmup_steps``
    a step count (a fraction resolved against the total steps); ``train.num_train_epochs`` the
    epochs that ``max_steps`` implies, when it is set. Reloading it reproduces the run.
    """
    out = config_mod.resolve_paths(copy.deepcopy(cfg), os.getcwd())
    out.loss.imports = loss_import_paths(out.loss.imports)  # a module of the current directory: its file
    dtype = next(model.parameters()).dtype
    out.model.dtype = next((k for k, v in DTYPES.items() if v == dtype), str(dtype).removeprefix("torch."))
    t = out.train
    t.bf16 = bool(args.bf16)
    t.gradient_checkpointing = bool(getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing)
    max_steps, steps_per_epoch = total_steps(args, n_train)
    if args.max_steps > 0:
        t.num_train_epochs = max_steps / steps_per_epoch
    t.warmup_steps = float(args.get_warmup_steps(max_steps))
    return out


def final_evaluation(trainer: Any) -> dict[str, float]:
    """The evaluation metrics at the last step: the ones logged there when the schedule already
    evaluated it (``eval_steps`` divides the step count), else one ``trainer.evaluate()``."""
    last = next((r for r in reversed(trainer.state.log_history) if "eval_loss" in r), None)
    if last is not None and last.get("step") == trainer.state.global_step:
        return {k: v for k, v in last.items() if k.startswith("eval_")}
    return trainer.evaluate()


def teardown(trainer: Any) -> None:
    """Free the wrapped model/optimizer, then end the process group: DDP processes otherwise may
    abort at exit ('terminate called without an active exception')."""

    distributed = trainer.accelerator.num_processes > 1
    trainer.accelerator.free_memory()
    del trainer
    gc.collect()
    if distributed and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
