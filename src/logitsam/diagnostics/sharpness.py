"""Sharpness of the preference loss at a checkpoint (paper §4.3): parameter- and logit-Hessian traces."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from logitsam.core.logprobs import sequence_logps, shift_for_causal_lm, token_logps_twice_differentiable
from logitsam.core.objective import pair_logps
from logitsam.core.registry import LossSpec
from logitsam.core.scoring import model_sequence_logps
from logitsam.diagnostics.hessian import TraceEstimate, exact_logit_hessian_trace, parameter_hessian_trace


def preference_loss_of_token_logps(
    batch: dict[str, Tensor], spec: LossSpec, params: dict[str, Any], ref: Tensor | None
) -> Callable[[Tensor], Tensor]:
    """Label log-probs (2B, T) (causal-shifted labels; 0 where not scored) -> mean preference loss of the
    batch (chosen rows first, then rejected)."""
    labels = shift_for_causal_lm(batch["labels"])
    scores = (batch.get("score_chosen"), batch.get("score_rejected"))

    def fn(token_lp: Tensor) -> Tensor:
        sums, lengths = sequence_logps(token_lp, labels)
        return spec.fn(pair_logps(sums, lengths, ref, scores), **params).losses.mean()

    return fn


def preference_loss_of_logits(
    batch: dict[str, Tensor], spec: LossSpec, params: dict[str, Any], ref: Tensor | None
) -> Callable[[Tensor], Tensor]:
    """Logits (2B, T, V) -> mean preference loss of the batch (chosen rows first, then rejected)."""
    labels = shift_for_causal_lm(batch["labels"])
    of_tokens = preference_loss_of_token_logps(batch, spec, params, ref)
    return lambda logits: of_tokens(token_logps_twice_differentiable(logits, labels))


def _eager_attention(model: Any) -> None:
    """Fused SDPA kernels have no double backward (Hessian-vector products need one): use eager attention."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    elif hasattr(model, "config"):
        model.config._attn_implementation = "eager"


def measure_sharpness(
    model: Any,
    batch: dict[str, Tensor],
    spec: LossSpec,
    params: dict[str, Any],
    *,
    ref_model: Any = None,
    probes: int = 16,
    seed: int = 0,
    target_rel_se: float | None = None,
) -> dict[str, TraceEstimate]:
    """Traces of the loss Hessian in all trainable parameters (Hutchinson) and in the logits (exact).

    ``ref_model`` gives the reference log-probs when the loss needs them (default: the model itself,
    i.e. the checkpoint is its own reference, δ = 0). ``target_rel_se``: probe the parameter trace until
    its standard error is at most this fraction of |trace| (``probes`` the cap), e.g. 0.05 for the study's
    5%. The logit-Hessian trace is exact (:func:`exact_logit_hessian_trace`: standard error 0, 0 probes).
    """
    model.eval()  # no dropout: the Hessian of a deterministic loss
    _eager_attention(model)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    ref = None
    if spec.needs_reference:
        with torch.no_grad():
            ref = model_sequence_logps(ref_model or model, ids, mask, batch["labels"])
    loss_fn = preference_loss_of_logits(batch, spec, params, ref)
    params_list = [p for p in model.parameters() if p.requires_grad]
    if not params_list:
        raise ValueError("the model has no trainable parameters: the parameter-Hessian trace is taken over them")
    param = parameter_hessian_trace(
        lambda: loss_fn(model(input_ids=ids, attention_mask=mask).logits),
        params_list,
        probes=probes,
        seed=seed,
        target_rel_se=target_rel_se,
    )
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    labels = shift_for_causal_lm(batch["labels"])
    logit = exact_logit_hessian_trace(preference_loss_of_token_logps(batch, spec, params, ref), logits, labels)
    return {"parameter_hessian": param, "logit_hessian": logit}
