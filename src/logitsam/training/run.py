"""Build everything a training run needs from a Config and run it (the body of ``logitsam train``)."""

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

import torch
import torch.distributed as dist

from logitsam.config import schema as config_mod
from logitsam.config.schema import Config
from logitsam.config.values import numbers_from_text
from logitsam.core.combined import combine_losses
from logitsam.core.registry import HyperparameterError, LossSpec, get_loss, resolve_hparams
from logitsam.data.batching import DropCounts, PreferenceCollator, tokenize_examples
from logitsam.data.examples import load_examples
from logitsam.errors import ConfigError
from logitsam.lora import apply_lora, check_lora_targets
from logitsam.losses import import_loss_modules, loss_import_paths
from logitsam.models import DTYPES, load_model, load_reference, load_tokenizer
from logitsam.training import manifest
from logitsam.training.checkpoints import checkpoint_step, logged_at_step, resolve_resume, trim_metrics
from logitsam.training.commit import AtomicCheckpoints, share_as_umask
from logitsam.training.modelcard import portable_adapter_config, saving, write_model_card
from logitsam.training.preflight import build_training_args, check_config, check_optimizer
from logitsam.training.reference import attach_reference_logps
from logitsam.training.resume import (
    DATA_FINGERPRINT,
    check_resume_data,
    check_resume_parameters,
    check_resume_settings,
    data_fingerprint,
    save_data_fingerprint,
)
from logitsam.training.rundir import claim, clear_previous_run, is_main_process
from logitsam.training.runstate import FINAL_FILES, final_problem, record_final, start_run
from logitsam.training.trainer import PreferenceTrainer

__all__ = [
    "build_training_args", "check_config", "check_eval_rows", "loss_setup", "prepare_data", "resolved_config", "train"
]  # fmt: skip

log = logging.getLogger(__name__)
SAVED = (".safetensors", ".bin")  # sharded weights too: what a final save writes with a restrictive mode


def loss_setup(cfg: Config) -> tuple[LossSpec, dict[str, Any]]:
    """The loss spec and its validated hyperparameters (``loss.beta`` is shorthand for params.beta).

    Errors name the config key: ``loss.name``, ``loss.beta``, ``loss.params.<key>`` or ``loss.terms[i]``.
    """
    import_loss_modules(cfg.loss.imports)
    if cfg.loss.name == WEIGHTED or cfg.loss.terms:
        return _weighted_setup(cfg), {}
    try:
        spec = get_loss(cfg.loss.name)
    except ValueError as e:
        hint = "" if cfg.loss.imports else " (a loss of your own: name the module that registers it in loss.imports)"
        raise ConfigError(f"loss.name: {e}{hint}") from None
    params = numbers_from_text(dict(cfg.loss.params))  # YAML 1.1 reads 1e-4 as a string
    if cfg.loss.beta is not None:
        if "beta" not in spec.defaults:
            raise ConfigError(f"loss.beta: loss {spec.name!r} has no beta (its hyperparameters: {_known(spec)})")
        if "beta" in params and params["beta"] != cfg.loss.beta:
            raise ConfigError(
                f"loss.beta: {cfg.loss.beta!r} and loss.params.beta: {params['beta']!r} disagree "
                "(loss.beta is shorthand for loss.params.beta): set one of them"
            )
        params["beta"] = cfg.loss.beta
    try:
        return spec, resolve_hparams(spec, params)
    except HyperparameterError as e:
        key = "loss.beta" if e.key == "beta" and cfg.loss.beta is not None else f"loss.params.{e.key}"
        raise ConfigError(f"{key}: {e}") from None


WEIGHTED = "weighted"  # loss.name of a weighted sum of registered losses (loss.terms)


def _weighted_setup(cfg: Config) -> LossSpec:
    """loss.name: weighted with loss.terms [{name, weight, params}] -> one weighted loss; loss.beta and
    loss.params are shared by every term with that key (as TRL's options), a term's own params win."""
    if cfg.loss.name != WEIGHTED or not cfg.loss.terms:
        raise ConfigError(f"loss.terms: a weighted sum is loss.name: {WEIGHTED} with a non-empty loss.terms")
    shared = numbers_from_text(dict(cfg.loss.params)) | ({} if cfg.loss.beta is None else {"beta": cfg.loss.beta})
    terms, used = [], set()
    for i, term in enumerate(cfg.loss.terms):
        where = f"loss.terms[{i}]"
        if set(term) - {"name", "weight", "params"} or "name" not in term:
            raise ConfigError(f"{where}: a term is {{name, weight, params}}, got keys {sorted(term)}")
        try:
            spec = get_loss(term["name"])
        except ValueError as e:
            raise ConfigError(f"{where}.name: {e}") from None
        mine = {k: v for k, v in shared.items() if k in spec.defaults}
        used |= set(mine)
        terms.append((spec.name, term.get("weight", 1.0), mine | numbers_from_text(dict(term.get("params") or {}))))
    unused = sorted(set(shared) - used)
    if unused:
        raise ConfigError(f"loss.params / loss.beta: no term has {', '.join(unused)}")
    try:
        return combine_losses(terms)
    except (ValueError, HyperparameterError) as e:
        raise ConfigError(f"loss.terms: {e}") from None


def _known(spec: LossSpec) -> str:
    return ", ".join(sorted(spec.defaults)) or "none"


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
    train, evals = split_eval(train, evals, d.eval_fraction, d.seed)
    train_rows, drops = tokenize_examples(tokenizer, train, d.max_length, d.max_prompt_length)
    eval_rows, eval_drops = tokenize_examples(tokenizer, evals, d.max_length, d.max_prompt_length)
    drops.prompt_too_long += eval_drops.prompt_too_long
    drops.identical_responses += eval_drops.identical_responses
    if not train_rows:
        raise ConfigError(f"data.train_files: no usable rows after tokenization ({drops.total} dropped)")
    check_eval_rows(cfg, len(evals), len(eval_rows))
    return Prepared(tokenizer, train_rows, eval_rows, drops)


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


def already_finished(cfg: Config, resume: str, args: Any, n_train: int) -> dict[str, Any] | None:
    """The result of resuming a run that already finished (touching nothing), else None.

    Finished: the checkpoint is at the last step *and* the run state records the final save at that step,
    its files intact; otherwise the resume trains no step and makes the final save (runstate.py)."""
    done, steps = checkpoint_step(resume), total_steps(args, n_train)[0]
    if done is None or done < steps:
        return None
    problem = final_problem(cfg.train.output_dir, done, model=cfg.train.save_model)
    if problem is not None:
        name = os.path.basename(resume)
        log.warning("%s: %s is at the last step (%d), but the run did not finish: %s; making its final save now "
                    "(no step is trained)", cfg.train.output_dir, name, done, problem)  # fmt: skip
        return None
    log.warning(
        "%s: the run already finished (%s is at step %d of %d); nothing to do — to train longer, raise "
        "train.max_steps or train.num_train_epochs with train.resume_allow_changes=true",
        cfg.train.output_dir,
        os.path.basename(resume),
        done,
        steps,
    )
    return {"metrics": {"already_finished": True, "global_step": done, "max_steps": steps}}


def train(cfg: Config, on_end: Callable[[Any], None] | None = None, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Run training as configured; returns ``{"metrics": ...}`` (final metrics and data counts).

    ``on_end(trainer)`` runs on every rank after training, before distributed teardown.
    ``callbacks``: extra ``transformers.TrainerCallback`` instances (e.g. probes of the model during training).
    """
    check_config(cfg)
    spec, params = loss_setup(cfg)
    t = cfg.train
    if cfg.sam.rho < 0:
        log.warning(
            "sam.rho = %g < 0: SAM then steps *against* the ascent direction (an anti-perturbation that seeks "
            "sharper regions); the paper's logits-SAM uses ρ > 0 with a positive learning rate",
            cfg.sam.rho,
        )
    resuming = t.resume_from_checkpoint not in (None, False)
    with claim(t.output_dir, resuming=resuming, overwrite=t.overwrite_output_dir):
        resume = resolve_resume(t.output_dir, t.resume_from_checkpoint, allow_incomplete=t.resume_allow_incomplete)
        return _train(cfg, spec, params, resume, on_end, callbacks)


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


def _train(
    cfg: Config,
    spec: LossSpec,
    params: dict[str, Any],
    resume: str | None,
    on_end: Callable[[Any], None] | None,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Load, check everything that can fail, and only then touch output_dir (trim metrics.jsonl,
    write config.yaml) and train: a run that fails before training loses nothing already written."""

    tokenizer = load_tokenizer(cfg.model)
    data = prepare_data(cfg, tokenizer)
    checkpointing = bool(cfg.model.gradient_checkpointing or cfg.train.gradient_checkpointing)
    has_eval = bool(data.eval_rows)
    args = build_training_args(cfg.train, has_eval=has_eval, checkpointing=checkpointing)
    model = load_model(cfg.model, vocab_size=len(tokenizer), merge_adapters=True)  # tiny-random: fixed init
    check_lora_targets(model, cfg.model)
    if checkpointing:
        model.config.use_cache = False
    resolved = resolved_config(cfg, args, model, len(data.train_rows))
    fingerprints = {"kind": "train", "training": data_fingerprint(data.train_rows)}
    fingerprints["evaluation"] = data_fingerprint(data.eval_rows)
    if resume:
        check_resume_settings(resolved, resume)
        check_resume_parameters(resolved, resume)
        check_resume_data(resolved, fingerprints, resume)
        finished = already_finished(cfg, resume, args, len(data.train_rows))
        if finished is not None:
            return finished
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
        callbacks=[AtomicCheckpoints(), *callbacks],
    )
    steps = total_steps(args, len(data.train_rows))[0]
    check_optimizer(trainer, cfg.train, steps, has_eval, checkpointing)
    counts = {"rows_train": len(data.train_rows), "rows_eval": len(data.eval_rows), "rows_dropped": data.drops.total}
    metrics = train_and_save(trainer, cfg, resolved, resume, fingerprints, counts)
    if on_end is not None:
        on_end(trainer)
    teardown(trainer)
    return {"metrics": metrics}


def train_and_save(
    trainer: Any,
    cfg: Config,
    resolved: Config,
    resume: str | None,
    fingerprints: dict[str, str],
    counts: dict[str, int],
    kind: str = "train",
) -> dict[str, Any]:
    """Everything is verified: now the run directory changes (metrics trimmed to the resumed step,
    config.yaml and the data fingerprint written), then train, save the model and its card; returns
    the final metrics with ``counts``. Shared by ``train`` and ``sft``."""
    out = cfg.train.output_dir
    if is_main_process():
        clear_previous_run(out)  # overwrite_output_dir: only now, with everything checked
        manifest.record(out, files=["config.yaml", DATA_FINGERPRINT])
        step = checkpoint_step(resume) if resume else None
        if step is not None:  # the interrupted run logged steps the resumed one logs again
            trim_metrics(out, step, logged_at_step(resume))
        start_run(out, resolved, step)  # writes config.yaml; the old final save stops counting
        save_data_fingerprint(out, fingerprints)
    result = trainer.train(resume_from_checkpoint=resume)
    if cfg.train.save_model:
        with saving(trainer.model, out):  # what the save writes is recorded as ours; a user's README.md stays
            trainer.save_model(out)
        if is_main_process():
            share_as_umask([os.path.join(out, n) for n in os.listdir(out) if n in FINAL_FILES or n.endswith(SAVED)])
    metrics = dict(result.metrics)
    if trainer.eval_dataset is not None:
        metrics.update(final_evaluation(trainer))
    metrics.update(counts)
    if is_main_process():
        if cfg.train.save_model:
            portable_adapter_config(out, resolved)
            write_model_card(resolved, {**metrics, "global_step": trainer.state.global_step}, kind=kind)
        save = cfg.train.save_model
        record_final(out, trainer.state.global_step, model=save, card=save)  # last: now the run is finished
    return metrics


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
