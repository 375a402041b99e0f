"""logits-SAM for TRL's ``DPOTrainer`` and (experimental) ``CPOTrainer``, in two lines::

    from logitsam.integrations.trl import with_logits_sam
    trainer = with_logits_sam(trl.DPOTrainer)(model=model, args=trl.DPOConfig(...), train_dataset=ds, rho=1e-4)

``with_logits_sam(cls)`` returns a subclass of ``cls`` whose constructor takes ``cls``'s own
arguments plus ``rho`` (the radius; paper Table 6: 1e-5…1e-3; 0 turns logits-SAM off),
``sam_method`` (weight | gram | chunked | auto) and ``chunk_rows``. They are constructor arguments,
not config fields, so TRL's config classes are used unchanged. Everything else stays TRL's: data
preparation and collation, the reference (``ref_model``, the policy with its PEFT adapters
disabled, or ``precompute_ref_log_probs``), optimizer, callbacks, logging. Only ``compute_loss``
(and ``prediction_step``, so evaluation takes the same path) is replaced: TRL's collated batch is
converted to logitsam's layout and :class:`~logitsam.core.objective.Objective` computes the loss — the
fused head with logits-SAM inside it — exactly as :class:`~logitsam.training.trainer.PreferenceTrainer`.

TRL settings map to registered losses through ``LOSS_MAP`` (CPO) and ``registry_trl.TRL_NAMES`` (every
DPO ``loss_type``, each with TRL's options: ``beta``, ``label_smoothing`` where the type reads it,
``f_divergence_type``/``f_alpha_divergence_coef``, ``ld_alpha``, ``use_weighting``, ``discopop_tau``); a
``loss_type`` list with ``loss_weights`` (MPO) is one weighted loss, logits-SAM perturbing for the sum.
Settings without an exact counterpart are refused (``UNSUPPORTED``) instead of being silently changed. Metrics go to
TRL's own metric store, so they reach TRL's logs, ``report_to`` and ``state.log_history``:
``rewards/*``, ``logps/chosen``, ``logps/rejected`` (TRL's names; log-probs are sums), plus
``logps/*_drift``, ``probs/top_token`` and ``sam/{loss_pre,loss_post,eps_norm,grad_norm}``.
TRL's ``entropy``, ``logits/*``, ``mean_token_accuracy``, ``num_tokens`` and CPO's ``nll_loss``
are not logged: they need the full logits the fused head never builds. For ``ipo`` the rewards are
β × length-normalised log-ratios (what IPO's loss uses); TRL logs unnormalised ones. Evaluation
returns no logits (``compute_metrics`` receives none).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import is_peft_model
from torch import Tensor

from logitsam.core.combined import combine_losses
from logitsam.core.logprobs import IGNORE_INDEX
from logitsam.core.objective import Objective
from logitsam.core.registry import HyperparameterError, LossSpec, get_loss, resolve_hparams
from logitsam.core.registry_trl import TRL_NAMES
from logitsam.errors import UserError
from logitsam.sam.common import check_method, check_rho
from logitsam.training.reference import batch_reference_logps
from logitsam.training.trainer import head_is_sharded

log = logging.getLogger(__name__)


class UnsupportedTrlSetting(UserError, ValueError):
    """A TRL setting logits-SAM has no exact counterpart for; the message names it and says why."""


# (TRL trainer family, TRL loss_type) -> (registered loss, its hyperparameters from TRL's config); DPO: _dpo_term.
LOSS_MAP: dict[tuple[str, str], tuple[str, Callable[[Any], dict[str, Any]]]] = {
    # TRL's CPO NLL is a token mean over the whole chosen batch; ours is each pair's token mean
    # (equal when the chosen responses have equal lengths): a batch-wide mean would couple the
    # pairs, which the fused head's per-pair gradients rule out (docs/design.md §3 contract).
    ("cpo", "sigmoid"): ("cpo", lambda a: {"beta": a.beta, "nll_weight": a.cpo_alpha, "nll_mode": "mean"}),
    ("cpo", "simpo"): ("simpo", lambda a: {"beta": a.beta, "gamma": a.simpo_gamma}),
}

# (family, loss_type or None for all, TRL config field, accepted values, why other values are refused)
UNSUPPORTED: tuple[tuple[str, str | None, str, tuple[Any, ...], str], ...] = (
    (
        "dpo",
        None,
        "padding_free",
        (False,),
        "packed rows need the model's variable-length attention forward; the objective runs padded (2B, T) "
        "batches, whose chosen/rejected rows the fused head pairs",
    ),
    ("cpo", None, "label_smoothing", (0.0,), "conservative CPO/SimPO is not in the loss registry"),
    ("cpo", None, "alpha", (0.0,), "AlphaPO's reward transform is not in the loss registry"),
    ("cpo", None, "is_encoder_decoder", (None, False), "the objective is for decoder-only models"),
    ("cpo", "simpo", "cpo_alpha", (0.0,), "CPO-SimPO's NLL term is not part of simpo; set cpo_alpha=0"),
)

_DPO_KEYS = {"input_ids", "attention_mask", "completion_mask", "ref_chosen_logps", "ref_rejected_logps"}


def trl_family(trainer_cls: type) -> str:
    """'dpo' or 'cpo': which TRL trainer ``trainer_cls`` is (or subclasses)."""
    for c in trainer_cls.__mro__:
        if c.__module__.startswith("trl.") and c.__name__ in ("DPOTrainer", "CPOTrainer"):
            return c.__name__[:3].lower()
    raise UnsupportedTrlSetting(f"{trainer_cls.__name__} is neither TRL's DPOTrainer nor its CPOTrainer")


# our hyperparameter -> TRL DPOConfig field
_DPO_FIELDS = {
    "beta": "beta",
    "label_smoothing": "label_smoothing",
    "f_divergence": "f_divergence_type",
    "f_alpha": "f_alpha_divergence_coef",
    "ld_alpha": "ld_alpha",
    "use_weighting": "use_weighting",
    "discopop_tau": "discopop_tau",
}


def _dpo_term(args: Any, loss_type: str) -> tuple[str, dict[str, Any]]:
    """Registered name and hyperparameters of one DPO ``loss_type`` under TRL config ``args``: every option
    the type reads in TRL 1.16 (``sigmoid`` reads no ``label_smoothing``: that is ``robust``); TRL refuses
    ``f_divergence_type`` for the types without an f-DPO form and ``use_weighting`` for the sorting ones."""
    if loss_type not in TRL_NAMES:
        raise UnsupportedTrlSetting(f"loss_type={loss_type!r} is not a TRL 1.16 DPO loss type ({', '.join(TRL_NAMES)})")
    name = TRL_NAMES[loss_type]
    keys = get_loss(name).defaults
    values = {ours: getattr(args, field) for ours, field in _DPO_FIELDS.items() if hasattr(args, field)}
    values["ld_alpha"] = 1.0 if values.get("ld_alpha") is None else values["ld_alpha"]  # None: plain sums
    if values.get("f_divergence", "reverse_kl") != "reverse_kl" and "f_divergence" not in keys and name != "sft":
        raise UnsupportedTrlSetting(f"f_divergence_type={values['f_divergence']!r}: {loss_type} has no f-DPO form")
    if values.get("use_weighting") and "use_weighting" not in keys:
        raise UnsupportedTrlSetting(f"use_weighting=True: {loss_type} sorts the batch, which misaligns WPO's weights")
    hparams = {k: v for k, v in values.items() if k in keys and not (name == "dpo" and k == "label_smoothing")}
    try:
        return name, resolve_hparams(get_loss(name), hparams)
    except HyperparameterError as e:
        raise UnsupportedTrlSetting(f"{_DPO_FIELDS.get(e.key, e.key)}: {e}") from None


def trl_loss(family: str, args: Any) -> tuple[LossSpec, dict[str, Any]]:
    """The loss spec and hyperparameters for TRL config ``args`` of a ``family`` trainer: a registered loss,
    or for a DPO ``loss_type`` list / ``loss_weights`` the weighted sum of its terms (hyperparameters bound).

    Raises :class:`UnsupportedTrlSetting` naming the field for anything that cannot be expressed.
    """
    types = [args.loss_type] if isinstance(args.loss_type, str) else list(args.loss_type)
    for fam, lt, name, accepted, why in UNSUPPORTED:
        value = getattr(args, name, accepted[0])
        if fam == family and (lt is None or lt in types) and value not in accepted:
            raise UnsupportedTrlSetting(f"{name}={value!r} is not supported with logits-SAM: {why}")
    if family == "dpo":
        weights = list(getattr(args, "loss_weights", None) or [1.0] * len(types))
        if len(weights) != len(types):
            raise UnsupportedTrlSetting(f"loss_weights={weights!r}: one weight per loss_type {types!r}")
        terms = [(*_dpo_term(args, lt), w) for lt, w in zip(types, weights, strict=True)]
        if len(terms) == 1 and terms[0][2] == 1.0:
            return get_loss(terms[0][0]), terms[0][1]
        try:
            return combine_losses([(n, w, p) for n, p, w in terms]), {}
        except ValueError as e:
            raise UnsupportedTrlSetting(f"loss_weights: {e}") from None
    if len(types) != 1 or (family, types[0]) not in LOSS_MAP:
        known = ", ".join(t for f, t in LOSS_MAP if f == family)
        raise UnsupportedTrlSetting(f"loss_type={types!r} is not supported with logits-SAM (supported: {known})")
    ours, hparams = LOSS_MAP[(family, types[0])]
    spec = get_loss(ours)
    return spec, resolve_hparams(spec, hparams(args))


def dpo_batch(inputs: dict[str, Any]) -> dict[str, Tensor]:
    """TRL DPO batch (input_ids, attention_mask, completion_mask: (2B, T), chosen rows first) -> ours.

    labels (2B, T) = input_ids on completion tokens, −100 elsewhere (not yet shifted).
    """
    extra = sorted(k for k in inputs if k not in _DPO_KEYS)
    if extra:
        raise UnsupportedTrlSetting(f"batch keys {extra}: only text preference batches are supported")
    ids = inputs["input_ids"]
    labels = ids.masked_fill(inputs["completion_mask"] == 0, IGNORE_INDEX)
    return {"input_ids": ids, "attention_mask": inputs["attention_mask"], "labels": labels}


def cpo_batch(inputs: dict[str, Any], pad_token_id: int) -> dict[str, Tensor]:
    """TRL CPO batch (chosen_* and rejected_* (B, T±): input_ids, attention_mask, labels) -> ours, (2B, T).

    Both halves are right-padded to the same width and stacked, chosen rows first.
    """
    width = max(inputs["chosen_input_ids"].shape[1], inputs["rejected_input_ids"].shape[1])

    def both(key: str, value: int) -> Tensor:
        halves = [inputs[f"{side}_{key}"] for side in ("chosen", "rejected")]
        return torch.cat([F.pad(t, (0, width - t.shape[1]), value=value) for t in halves])

    return {
        "input_ids": both("input_ids", pad_token_id),
        "attention_mask": both("attention_mask", 0),
        "labels": both("labels", IGNORE_INDEX),
    }


# Where each family's trainer keeps per-step metrics until ``log``, and the prefix it expects on eval keys.
_METRIC_STORE = {"dpo": ("_metrics", ""), "cpo": ("_stored_metrics", "eval_")}


@functools.cache
def with_logits_sam(trainer_cls: type) -> type:
    """A subclass of TRL's ``DPOTrainer`` / ``CPOTrainer`` (or a subclass of them) using logits-SAM.

    Its constructor takes ``trainer_cls``'s arguments plus ``rho: float = 1e-4``,
    ``sam_method: str = "auto"`` and ``chunk_rows: int | None = None`` (see the module docstring).
    """
    family = trl_family(trainer_cls)

    class LogitsSam(trainer_cls):  # type: ignore[misc, valid-type]
        loss_is_scaled_for_ga = False  # the loss is a micro-batch mean, as TRL's: divide by GA steps

        def __init__(
            self,
            *args: Any,
            rho: float = 1e-4,
            sam_method: str = "auto",
            sam_adaptive: bool = False,
            chunk_rows: int | None = None,
            **kwargs: Any,
        ) -> None:
            try:  # the library's own checks, reported as this API's error (rho=True is not 1.0)
                rho = check_rho(rho)
                check_method(sam_method)
            except ValueError as e:
                raise UnsupportedTrlSetting(f"rho={rho!r}, sam_method={sam_method!r}: {e}") from None
            given = inspect.signature(trainer_cls.__init__).bind_partial(None, *args, **kwargs).arguments.get("args")
            if given is not None:
                trl_loss(family, given)  # refuse before TRL tokenizes data and precomputes references
            super().__init__(*args, **kwargs)
            spec, hparams = trl_loss(family, self.args)
            for attr, why in (
                ("aux_loss_enabled", "the MoE router auxiliary loss is not added; set router_aux_loss_coef=0"),
                ("_is_vision_dataset", "vision-language batches are not supported"),
                ("is_encoder_decoder", "the objective is for decoder-only models"),
            ):
                if getattr(self, attr, False):
                    raise UnsupportedTrlSetting(f"{type(self).__name__}: {why}")
            if family == "cpo" and spec.name == "cpo" and hparams["nll_weight"] != 0:
                log.info("cpo_alpha: logits-SAM's NLL term is each pair's token mean (TRL: the batch's token mean)")
            self.logitsam_objective = Objective(
                spec,
                hparams,
                rho=rho,
                method=sam_method,
                chunk_rows=chunk_rows,
                adaptive=bool(sam_adaptive),  # the paper code's sam_adaptive: ε ∝ |W|⊙g
            )

        def _logitsam_batch(self, inputs: dict[str, Any]) -> dict[str, Tensor]:
            if family == "dpo":
                return dpo_batch(inputs)
            pad = getattr(self, "pad_token_id", None)
            return cpo_batch(inputs, self.processing_class.pad_token_id if pad is None else pad)

        @torch.no_grad()
        def _logitsam_reference(self, model: Any, inputs: dict[str, Any], batch: dict[str, Tensor]) -> Any:
            """((2B,) reference sums, and for LD-DPO their shared-prefix part, else None) or (None, None):
            precomputed in the batch, TRL's ref_model, or the policy without adapters."""
            if not self.logitsam_objective.spec.needs_reference:
                return None, None
            device = batch["input_ids"].device
            shared = "shared" in self.logitsam_objective.extras
            if "ref_chosen_logps" in inputs:  # TRL's precompute applied ld_alpha already: its own shared part
                ref = torch.cat([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]]).to(device)
                return ref, (ref if shared else None)
            from trl.models.utils import disable_gradient_checkpointing
            from trl.trainer.utils import use_adapter

            seqs = (batch["input_ids"], batch["attention_mask"], batch["labels"])
            rows = self.logitsam_objective.chunk_rows
            unwrapped = self.accelerator.unwrap_model(model)
            ref = getattr(self, "ref_model", None)
            if ref is None and not is_peft_model(unwrapped):
                raise RuntimeError("this loss needs a reference: no ref_model, PEFT adapters or precomputed logps")

            def adapters(m: Any) -> Any:  # TRL's convention: a separate "ref" adapter when there is one
                return use_adapter(m, adapter_name="ref" if "ref" in m.peft_config else None)

            gc_off = disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs)
            with gc_off, self.accelerator.autocast():  # the policy's precision, however the reference was prepared
                out = batch_reference_logps(
                    seqs, model, unwrapped, ref, adapters=adapters, chunk_rows=rows, shared=shared
                )
            return out if shared else (out, None)

        def _logitsam_store(self, mode: str, metrics: dict[str, Tensor]) -> None:
            """Means over ranks into TRL's metric store (one host sync for all metrics)."""
            keys = sorted(metrics)
            values = torch.stack([metrics[k].detach().float().reshape(()) for k in keys])
            if self.accelerator.num_processes > 1:
                values = self.accelerator.reduce(values, reduction="mean")
            attr, eval_prefix = _METRIC_STORE[family]
            prefix = eval_prefix if mode == "eval" else ""
            store = getattr(self, attr)[mode]
            for k, v in zip(keys, values.tolist(), strict=True):
                store[prefix + k].append(v)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            """TRL's batch through logitsam's objective (logits-SAM when training and ρ ≠ 0)."""
            mode = "train" if model.training else "eval"
            batch = self._logitsam_batch(inputs)
            ref, ref_shared = self._logitsam_reference(model, inputs, batch)
            res = self.logitsam_objective(
                model, batch, ref, sam=mode == "train", sharded=head_is_sharded(self), ref_shared=ref_shared
            )
            self._logitsam_store(mode, res.metrics)
            return (res.loss, {"sums": res.sums}) if return_outputs else res.loss

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            """Evaluation loss through :meth:`compute_loss` (no logits are returned)."""
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad(), self.compute_loss_context_manager():
                loss = self.compute_loss(model, inputs)
            return loss.detach(), None, None

    LogitsSam.__name__ = LogitsSam.__qualname__ = f"LogitsSam{trainer_cls.__name__}"
    LogitsSam.__module__ = __name__
    return LogitsSam
