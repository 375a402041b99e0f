"""``logitsam train``: the preference recipe (its loss, data, reference and trainer) for the staged
run of recipe.py."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from logitsam.config.schema import Config
from logitsam.config.values import numbers_from_text
from logitsam.core.combined import combine_losses
from logitsam.core.registry import HyperparameterError, LossSpec, get_loss, resolve_hparams
from logitsam.data.batching import PreferenceCollator, tokenize_examples
from logitsam.data.examples import load_examples
from logitsam.errors import ConfigError
from logitsam.losses import import_loss_modules
from logitsam.models import load_reference
from logitsam.training.commit import AtomicCheckpoints
from logitsam.training.preflight import build_training_args, check_config
from logitsam.training.recipe import (
    Data,
    Recipe,
    check_eval_rows,
    check_train_rows,
    resolved_config,
    run_recipe,
    split_eval,
    total_steps,
)
from logitsam.training.reference import attach_reference_logps
from logitsam.training.trainer import PreferenceTrainer

__all__ = [
    "PreferenceRecipe", "build_training_args", "check_config", "check_eval_rows", "loss_setup", "prepare_data",
    "resolved_config", "split_eval", "total_steps", "train",
]  # fmt: skip

log = logging.getLogger(__name__)


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


def prepare_data(cfg: Config, tokenizer: Any) -> Data:
    """Load, validate and tokenize train/eval data; hold out ``eval_fraction`` if no eval files."""
    d = cfg.data
    train = load_examples(d.train_files, d.format)
    evals = load_examples(d.eval_files, d.format) if d.eval_files else []
    train, evals = split_eval(train, evals, d.eval_fraction, d.seed)
    train_rows, drops = tokenize_examples(tokenizer, train, d.max_length, d.max_prompt_length)
    eval_rows, eval_drops = tokenize_examples(tokenizer, evals, d.max_length, d.max_prompt_length)
    drops.prompt_too_long += eval_drops.prompt_too_long
    drops.identical_responses += eval_drops.identical_responses
    check_train_rows(train_rows, drops.total)
    check_eval_rows(cfg, len(evals), len(eval_rows))
    return Data(train_rows, eval_rows, drops.total)


class PreferenceRecipe(Recipe):
    """``logitsam train``: preference optimization with a registered loss, logits-SAM and a reference."""

    kind = "train"

    def __init__(self) -> None:
        self.spec: LossSpec | None = None
        self.params: dict[str, Any] = {}

    def check(self, cfg: Config) -> None:
        self.spec, self.params = loss_setup(cfg)
        if cfg.sam.rho < 0:
            log.warning(
                "sam.rho = %g < 0: SAM then steps *against* the ascent direction (an anti-perturbation that seeks "
                "sharper regions); the paper's logits-SAM uses ρ > 0 with a positive learning rate",
                cfg.sam.rho,
            )

    def setup_data(self, cfg: Config, tokenizer: Any) -> Data:
        return prepare_data(cfg, tokenizer)

    def setup_reference(self, cfg: Config, model: Any, args: Any, tokenizer: Any, data: Data) -> Any:
        """The reference model; with ``loss.reference: precomputed`` its log-probs are attached to the rows
        instead (the policy before its first step is the reference unless another one is named)."""
        assert self.spec is not None
        if not self.spec.needs_reference:
            return None
        if cfg.loss.reference == "none":
            raise ConfigError(f"loss.reference: loss {self.spec.name!r} needs a reference (model or precomputed)")
        if cfg.loss.reference != "precomputed":
            return load_reference(cfg.model, model)
        ref_name = cfg.model.ref_name_or_path or cfg.model.name_or_path
        ref = model if ref_name == cfg.model.name_or_path else load_reference(cfg.model, model)
        ref = (ref if ref is not None else model).to(args.device)  # as the trainer will run it
        amp = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None
        name = os.path.basename(os.path.normpath(cfg.train.output_dir))
        for rows in (data.train_rows, data.eval_rows):
            if rows:
                attach_reference_logps(
                    ref, f"{ref_name}:{cfg.model.dtype}", rows, tokenizer.pad_token_id, autocast=amp, desc=name
                )
        return None  # the batches carry the reference log-probs now; a separate model is freed

    def setup_trainer(
        self, cfg: Config, model: Any, args: Any, tokenizer: Any, data: Data, reference: Any, callbacks: list[Any]
    ) -> Any:
        assert self.spec is not None
        return PreferenceTrainer(
            model=model,
            args=args,
            train_dataset=data.train_rows,
            eval_dataset=data.eval_rows or None,
            data_collator=PreferenceCollator(tokenizer.pad_token_id),
            processing_class=tokenizer,
            loss_spec=self.spec,
            loss_params=self.params,
            sam=cfg.sam,
            ref_model=reference,
            print_logs=cfg.train.print_logs,
            callbacks=[AtomicCheckpoints(), *callbacks],
        )


def train(cfg: Config, on_end: Callable[[Any], None] | None = None, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Run training as configured; returns ``{"metrics": ...}`` (final metrics and data counts).

    ``on_end(trainer)`` runs on every rank after training, before distributed teardown.
    ``callbacks``: extra ``transformers.TrainerCallback`` instances (e.g. probes of the model during training).
    """
    return run_recipe(PreferenceRecipe(), cfg, callbacks, on_end)
