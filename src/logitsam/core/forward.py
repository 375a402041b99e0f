"""Running a causal LM for what the objective needs: its last hidden state and output head.

The fused path asks the model for its final hidden state (``output_hidden_states``) and logits of
the last position only (``logits_to_keep=1``, a (S, 1, V) sliver), so no (S, T, V) logits exist;
the head is then applied by :mod:`logitsam.core.fused_head` to scored rows only. The model's own
``forward`` is still the call (DDP hooks, PEFT adapters, gradient checkpointing all apply).

A model qualifies when its output embedding is a plain ``nn.Linear`` and its forward takes
``logits_to_keep``. On the first call we also check that head(hidden) reproduces the model's own
last-position logits (models that scale or soft-cap logits fail this) and fall back to full
logits for good if it does not.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)


def unwrap(model: Any) -> Any:
    """The model inside DDP / torch.compile / accelerate wrappers (PEFT wrappers are kept)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None or inner is model:
            return model
        model = inner


def output_head(model: Any) -> nn.Linear | None:
    """The output embedding when it is a plain linear layer (not LoRA-wrapped, not sharded)."""
    m = unwrap(model)
    head = m.get_output_embeddings() if hasattr(m, "get_output_embeddings") else None
    return head if type(head) is nn.Linear and head.weight.dim() == 2 else None


def _accepts_logits_to_keep(model: Any) -> bool:
    m = unwrap(model)
    base = m.get_base_model() if hasattr(m, "get_base_model") else m
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def fusable(model: Any) -> bool:
    """Whether the fused head path may be used for ``model`` (see module docstring)."""
    m = unwrap(model)
    verdict = getattr(m, "_logitsam_fused_ok", None)
    if verdict is not None:
        return verdict
    return output_head(model) is not None and _accepts_logits_to_keep(model)


def _check_head(model: Any, hidden: Tensor, last_logits: Tensor) -> bool:
    """head(hidden[:, -1]) == the model's own last-position logits (once per model)."""
    m = unwrap(model)
    if getattr(m, "_logitsam_fused_ok", None) is not None:
        return m._logitsam_fused_ok
    head = output_head(model)
    with torch.no_grad():
        mine = F.linear(hidden[:, -1].to(head.weight.dtype), head.weight, head.bias).float()
        theirs = last_logits[:, -1].float()
        tol = 1e-4 if head.weight.dtype in (torch.float32, torch.float64) else 2e-2
        ok = bool((mine - theirs).abs().max() <= tol * (theirs.abs().max() + 1.0))
    if not ok:
        log.warning("the model's logits are not a plain linear head of its last hidden state; using full logits")
    m._logitsam_fused_ok = ok
    return ok


def body_forward(model: Any, input_ids: Tensor, attention_mask: Tensor, *, fused: bool) -> tuple[Tensor, Tensor | None]:
    """(last hidden state (S, T, d), full logits (S, T, V) or None when fused and verified)."""
    kwargs: dict[str, Any] = dict(
        input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False
    )
    if fused:
        out = model(**kwargs, logits_to_keep=1)
        if _check_head(model, out.hidden_states[-1], out.logits):
            return out.hidden_states[-1], None
    out = model(**kwargs)
    return out.hidden_states[-1], out.logits
