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

TRL settings map to registered losses through ``LOSS_MAP`` (the one table); settings without an
exact counterpart are refused (``UNSUPPORTED``) instead of being silently changed. Metrics go to
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
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import is_peft_model
from torch import Tensor

from logitsam.core.logprobs import IGNORE_INDEX
from logitsam.core.objective import Objective
from logitsam.core.registry import get_loss, resolve_hparams
from logitsam.errors import UserError
from logitsam.sam.common import METHODS
from logitsam.training.reference import batch_reference_logps
from logitsam.training.trainer import head_is_sharded

log = logging.getLogger(__name__)


class UnsupportedTrlSetting(UserError, ValueError):
    """A TRL setting logits-SAM has no exact counterpart for; the message names it and says why."""


# (TRL trainer family, TRL loss_type) -> (registered loss, its hyperparameters from TRL's config).
LOSS_MAP: dict[tuple[str, str], tuple[str, Callable[[Any], dict[str, Any]]]] = {
    ("dpo", "sigmoid"): ("dpo", lambda a: {"beta": a.beta}),
    ("dpo", "ipo"): ("ipo", lambda a: {"beta": a.beta}),
    ("dpo", "hinge"): ("hinge", lambda a: {"beta": a.beta}),
    # TRL's CPO NLL is a token mean over the whole chosen batch; ours is each pair's token mean
    # (equal when the chosen responses have equal lengths): a batch-wide mean would couple the
    # pairs, which the fused head's per-pair gradients rule out (docs/design.md §3 contract).
    ("cpo", "sigmoid"): ("cpo", lambda a: {"beta": a.beta, "nll_weight": a.cpo_alpha, "nll_mode": "mean"}),
    ("cpo", "simpo"): ("simpo", lambda a: {"beta": a.beta, "gamma": a.simpo_gamma}),
}

# (family, loss_type or None for all, TRL config field, accepted values, why other values are refused)
UNSUPPORTED: tuple[tuple[str, str | None, str, tuple[Any, ...], str], ...] = (
    ("dpo", None, "f_divergence_type", ("reverse_kl",), "only standard (reverse-KL) DPO log-ratios are mapped"),
    ("dpo", None, "ld_alpha", (None,), "LD-DPO's length-desensitised log-probs are not implemented"),
    ("dpo", None, "use_weighting", (False,), "WPO weights need whole-vocabulary token probabilities"),
    ("dpo", None, "padding_free", (False,), "the objective needs padded (2B, T) batches"),
    (
        "dpo",
        None,
        "label_smoothing",
        (0.0,),
        "TRL 1.16's sigmoid/ipo/hinge ignore it, logitsam's dpo would apply it (cDPO); refused as ambiguous",
    ),
    ("dpo", None, "loss_weights", (None, [1.0]), "the loss is not reweighted"),
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


def trl_loss(family: str, args: Any) -> tuple[str, dict[str, Any]]:
    """The registered loss name and hyperparameters for TRL config ``args`` of a ``family`` trainer.

    Raises :class:`UnsupportedTrlSetting` naming the field for anything ``LOSS_MAP`` cannot express.
    """
    types = args.loss_type
    types = [types] if isinstance(types, str) else list(types)
    if len(types) != 1:
        raise UnsupportedTrlSetting(f"loss_type={types!r}: logits-SAM takes one loss type, not a weighted sum")
    loss_type = types[0]
    if (family, loss_type) not in LOSS_MAP:
        known = ", ".join(t for f, t in LOSS_MAP if f == family)
        raise UnsupportedTrlSetting(f"loss_type={loss_type!r} is not supported with logits-SAM (supported: {known})")
    for fam, lt, name, accepted, why in UNSUPPORTED:
        value = getattr(args, name, accepted[0])
        if fam == family and lt in (None, loss_type) and value not in accepted:
            raise UnsupportedTrlSetting(f"{name}={value!r} is not supported with logits-SAM: {why}")
    ours, hparams = LOSS_MAP[(family, loss_type)]
    return ours, hparams(args)


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
            if sam_method not in METHODS:
                raise UnsupportedTrlSetting(f"sam_method={sam_method!r} is not one of {', '.join(METHODS)}")
            if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not math.isfinite(rho):
                raise UnsupportedTrlSetting(f"rho={rho!r} must be a finite number")  # rho=True is not 1.0
            given = inspect.signature(trainer_cls.__init__).bind_partial(None, *args, **kwargs).arguments.get("args")
            if given is not None:
                trl_loss(family, given)  # refuse before TRL tokenizes data and precomputes references
            super().__init__(*args, **kwargs)
            name, hparams = trl_loss(family, self.args)
            for attr, why in (
                ("aux_loss_enabled", "the MoE router auxiliary loss is not added; set router_aux_loss_coef=0"),
                ("_is_vision_dataset", "vision-language batches are not supported"),
                ("is_encoder_decoder", "the objective is for decoder-only models"),
            ):
                if getattr(self, attr, False):
                    raise UnsupportedTrlSetting(f"{type(self).__name__}: {why}")
            if family == "cpo" and name == "cpo" and hparams["nll_weight"] != 0:
                log.info("cpo_alpha: logits-SAM's NLL term is each pair's token mean (TRL: the batch's token mean)")
            spec = get_loss(name)
            self.logitsam_objective = Objective(
                spec,
                resolve_hparams(spec, hparams),
                rho=float(rho),
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
        def _logitsam_reference(self, model: Any, inputs: dict[str, Any], batch: dict[str, Tensor]) -> Tensor | None:
            """(2B,) reference sums: precomputed in the batch, TRL's ref_model, or the policy without adapters."""
            if not self.logitsam_objective.spec.needs_reference:
                return None
            device = batch["input_ids"].device
            if "ref_chosen_logps" in inputs:
                return torch.cat([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]]).to(device)
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
                return batch_reference_logps(seqs, model, unwrapped, ref, adapters=adapters, chunk_rows=rows)

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
            ref = self._logitsam_reference(model, inputs, batch)
            res = self.logitsam_objective(model, batch, ref, sam=mode == "train", sharded=head_is_sharded(self))
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
