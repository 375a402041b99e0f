"""Running a causal LM for what the objective needs: its last hidden state and output head.

The fused path asks the model for its final hidden state (``output_hidden_states``) and logits of
the last position only (``logits_to_keep=1``, a (S, 1, V) sliver), so no (S, T, V) logits exist;
the head is then applied by :mod:`logitsam.fused` to scored rows only. The model's own
``forward`` is still the call (DDP hooks, PEFT adapters, gradient checkpointing all apply).

A model qualifies when its output embedding is a plain ``nn.Linear`` and its forward takes
``logits_to_keep``. On the first call we also check that head(hidden) reproduces the model's own
last-position logits (models that scale or soft-cap logits fail this) and fall back to full
logits for good if it does not.

Mixed precision: accelerate (``mixed_precision: bf16``, ``Trainer(bf16=True)``, TRL's ``bf16=True``)
wraps the model's *forward* in autocast, so the model's own head runs in bf16 while code after the
forward returns runs outside it. A forward pre-hook on the head records the autocast state the
model's head really ran under (:class:`Body.amp`); the check compares like with like under it, and
the objective runs the fused head under the same autocast (bf16 products, float32 accumulation),
whatever the weights' dtype.

FSDP2 (``fully_shard``): the head's weight is a sharded DTensor outside its unit's forward. The
fused path runs inside :func:`full_head`, which unshards the unit that owns the head (FSDP's own
all-gather into its own unsharded parameter: no second copy) for the sweep and reshards it after,
if it was sharded before. The head's gradient lands on that unsharded parameter, which FSDP
reduce-scatters in its post-backward as for any other parameter.

DeepSpeed ZeRO-3: the head's parameters are partitioned (``ds_id``; full only while gathered).
:func:`full_head` gathers them for the sweep only (``deepspeed.zero.GatheredParameters``; a head that is
already available — persistent, or gathered by a module hook — is used as it is and left so). DeepSpeed
takes a gradient in the parameter's full shape through its post-accumulate-grad hook (it reduce-scatters
it into the rank's partition), and autograd only accumulates a full-shaped gradient into a full-shaped
parameter; so the fused backward calls :func:`regather` first, which gathers the head again, and a
one-shot hook registered after DeepSpeed's partitions it once DeepSpeed has taken the gradient
(docs/design.md §5.9). FSDP1 (flat parameters) is not fused: full logits per rank, logits-SAM by ``gram``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

log = logging.getLogger(__name__)


def unwrap(model: Any) -> Any:
    """The model inside DDP / torch.compile / accelerate wrappers (PEFT wrappers are kept)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None or inner is model:
            return model
        model = inner


def _plain_linear(head: Any) -> bool:
    """nn.Linear itself, or the class FSDP2 makes of it when the head is its own ``fully_shard`` unit."""
    cls = type(head)
    return cls is nn.Linear or (isinstance(head, FSDPModule) and cls.__bases__ == (FSDPModule, nn.Linear))


def output_head(model: Any) -> nn.Linear | None:
    """The output embedding when it is a plain linear layer (not LoRA-wrapped; under FSDP2 its weight
    may be a sharded DTensor: use it inside :func:`full_head`)."""
    m = unwrap(model)
    head = m.get_output_embeddings() if hasattr(m, "get_output_embeddings") else None
    return head if head is not None and _plain_linear(head) and len(full_shape(head.weight)) == 2 else None


def full_shape(t: Tensor) -> tuple[int, ...]:
    """A parameter's shape on the model (a partitioned ZeRO-3 parameter's own ``shape`` is its (0,) placeholder)."""
    return tuple(cast(Any, t).ds_shape) if zero3_param(t) else tuple(t.shape)  # DeepSpeed adds ds_shape


def head_owner(model: Any) -> FSDPModule | None:
    """The FSDP2 unit holding the output head's parameters (its nearest ``fully_shard`` ancestor or
    itself), or None when the model is not FSDP2-sharded."""
    m, head = unwrap(model), output_head(model)
    if head is None:
        return None
    names = {id(mod): name for name, mod in m.named_modules()}
    path = names.get(id(head))
    if path is None:
        return None
    owner = m if isinstance(m, FSDPModule) else None
    parts = path.split(".") if path else []
    for i in range(1, len(parts) + 1):
        sub = m.get_submodule(".".join(parts[:i]))
        if isinstance(sub, FSDPModule):
            owner = sub
    return owner


def zero3_param(t: Tensor | None) -> bool:
    """A DeepSpeed ZeRO-3 parameter (partitioned across ranks, full only while gathered)."""
    return t is not None and hasattr(t, "ds_id")


def _available(p: Any) -> bool:  # a DeepSpeed parameter: a Tensor with ds_* attributes
    """A ZeRO-3 parameter whose full data is on this rank now (``ZeroParamStatus.AVAILABLE``)."""
    return getattr(p.ds_status, "name", "") == "AVAILABLE"


def is_full(weight: Tensor) -> bool:
    """A weight whose every entry lives on this rank (not an FSDP2 shard, not a partitioned ZeRO-3 parameter)."""
    if isinstance(weight, DTensor) or weight.numel() == 0:
        return False
    return not zero3_param(weight) or _available(weight)


def _zero3_params(head: nn.Linear) -> list[Any]:
    return [p for p in (head.weight, head.bias) if zero3_param(p)]


def _release_after_grad(p: Any) -> None:
    """Post-accumulate-grad hook (registered after DeepSpeed's, so it runs once DeepSpeed has taken the
    gradient): partitions a head that :class:`_Zero3Regather` gathered for the gradient to land."""
    if getattr(p, "_logitsam_gathered", False):
        p._logitsam_gathered = False
        if not p.ds_active_sub_modules:  # a tied embedding's backward holds it: its module hook releases it
            p.partition()


class _Zero3Regather:
    """Makes a ZeRO-3 head full for the fused backward (its recomputation reads it; autograd accumulates a
    full-shaped gradient only into a full-shaped parameter); each parameter gathered here is partitioned
    again right after DeepSpeed's own post-accumulate-grad hook has taken its gradient."""

    def __init__(self, params: list[Any]) -> None:
        self.params = params

    def __call__(self) -> None:
        todo = [p for p in self.params if not _available(p)]
        if not todo:
            return
        todo[0].all_gather(param_list=todo)
        for p in todo:
            if not getattr(p, "_logitsam_hooked", False):
                p.register_post_accumulate_grad_hook(_release_after_grad)
                p._logitsam_hooked = True
            # a frozen head takes no gradient, so no hook fires: it stays gathered until DeepSpeed releases it
            p._logitsam_gathered = p.requires_grad


@contextmanager
def full_head(model: Any) -> Iterator[nn.Linear]:
    """The output head with its full weight for the duration of the block.

    Under FSDP2 with the head sharded at this moment (its unit resharded after forward), the owning
    unit is unsharded — FSDP's all-gather into its unsharded parameter, which FSDP reduce-scatters
    the gradient of in post-backward — and resharded on exit. Under ZeRO-3 a partitioned head is gathered
    (``GatheredParameters``) and partitioned on exit; one DeepSpeed holds available is used as it is.
    Elsewhere the head as it is.
    """
    head = output_head(model)
    if head is None:
        raise ValueError("the model's output embedding is not a plain linear layer")
    owner = head_owner(model) if isinstance(head.weight, DTensor) else None
    zero3 = [p for p in _zero3_params(head) if not _available(p)]
    gather: AbstractContextManager = nullcontext()
    if zero3:
        import deepspeed  # optional: only a ZeRO-3 model has ds_id parameters

        gather = deepspeed.zero.GatheredParameters(zero3)  # read-only: partitioned again on exit
    if owner is not None:
        owner.unshard()
    try:
        with gather:
            if not is_full(head.weight):
                raise ValueError("the output head's weight is sharded and no FSDP2 unit or ZeRO-3 gathers it (FSDP1)")
            yield head
    finally:
        if owner is not None:
            owner.reshard()


def regather(model: Any) -> Any:
    """A callable that makes the head's weight full again, for a backward that must read it after
    :func:`full_head` has resharded it (FSDP2: unshard its unit), or return its gradient in the full shape
    (ZeRO-3: gather it, partitioned again once DeepSpeed has taken the gradient); None elsewhere."""
    owner = head_owner(model)
    return owner.unshard if owner is not None else land_grad(model)


def land_grad(model: Any) -> Any:
    """A callable the fused backward runs before it returns the head's gradient: ZeRO-3 gathers the head
    (:class:`_Zero3Regather`) so the full-shaped gradient can land; None elsewhere."""
    head = output_head(model)
    params = [] if head is None else _zero3_params(head)
    return _Zero3Regather(params) if params else None


def gathers_head(model: Any) -> bool:
    """Whether a sharded head is gathered for the fused sweep: FSDP2 (its owning unit) or ZeRO-3 (not FSDP1)."""
    head = output_head(model)
    return head is not None and (head_owner(model) is not None or zero3_param(head.weight))


def _accepts_logits_to_keep(model: Any) -> bool:
    m = unwrap(model)
    base = m.get_base_model() if hasattr(m, "get_base_model") else m
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def fusable(model: Any) -> bool:
    """Whether the fused head path may be used for ``model`` (see module docstring): a plain linear
    head, full on this rank or owned by an FSDP2 unit, and a forward taking ``logits_to_keep``."""
    m = unwrap(model)
    verdict = getattr(m, "_logitsam_fused_ok", None)
    if verdict is not None:
        return verdict
    head = output_head(model)
    if head is None or not (is_full(head.weight) or gathers_head(model)):
        return False
    return _accepts_logits_to_keep(model)


class Body(NamedTuple):
    """What the model's forward gave the objective."""

    hidden: Tensor  # (S, T, d) last hidden state
    logits: Tensor | None  # (S, T, V) full logits, or None on the verified fused path
    amp: torch.dtype | None  # the autocast dtype the model's head ran under (None: autocast off)


def amp_context(device: torch.device, amp: torch.dtype | None) -> AbstractContextManager:
    """Autocast as the model's own head ran (``Body.amp``), for code running after its forward."""
    return torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()


class _AmpProbe:
    """A forward pre-hook on the head: records the autocast state at the moment the model calls it."""

    def __init__(self) -> None:
        self.amp: torch.dtype | None = None

    def __call__(self, module: nn.Module, args: Any) -> None:
        dev = cast(Tensor, module.weight).device.type
        self.amp = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None


def _check_head(model: Any, hidden: Tensor, last_logits: Tensor, amp: torch.dtype | None = None) -> bool:
    """head(hidden[:, -1]) == the model's own last-position logits (once per model), computed under the
    autocast the model's head ran under (like with like)."""
    m = unwrap(model)
    if getattr(m, "_logitsam_fused_ok", None) is not None:
        return m._logitsam_fused_ok
    with torch.no_grad(), full_head(model) as head, amp_context(head.weight.device, amp):
        mine = F.linear(hidden[:, -1].to(head.weight.dtype), head.weight, head.bias).float()
        theirs = last_logits[:, -1].float()
        low = amp is not None or head.weight.dtype not in (torch.float32, torch.float64)
        tol = 2e-2 if low else 1e-4
        close = (mine - theirs).abs().max() <= tol * (theirs.abs().max() + 1.0)
    ok = _agreed(close, model)
    if not ok:
        log.warning("the model's logits are not a plain linear head of its last hidden state; using full logits")
    m._logitsam_fused_ok = ok
    return ok


def _agreed(ok: Tensor, model: Any) -> bool:
    """The verdict every rank takes when the model's forward is collective (DDP, FSDP2): all fused or none
    (a rank taking full logits alone would run a second forward whose collectives the others never join).
    A model that is not wrapped for distributed training is decided locally (it may run on one rank)."""
    collective = isinstance(model, nn.parallel.DistributedDataParallel) or gathers_head(model)
    if collective and torch.distributed.is_available() and torch.distributed.is_initialized():
        t = ok.to(torch.int32).reshape(1)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        ok = t[0]
    return bool(ok)


def body_forward(model: Any, input_ids: Tensor, attention_mask: Tensor, *, fused: bool) -> Body:
    """The last hidden state, full logits unless fused and verified, and the autocast the head ran under."""
    kwargs: dict[str, Any] = dict(
        input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False
    )
    head = output_head(model)
    probe = _AmpProbe()
    handle = head.register_forward_pre_hook(probe) if head is not None else None
    try:
        if fused:
            out = model(**kwargs, logits_to_keep=1)
            if _check_head(model, out.hidden_states[-1], out.logits, probe.amp):
                return Body(out.hidden_states[-1], None, probe.amp)
        out = model(**kwargs)
    finally:
        if handle is not None:
            handle.remove()
    return Body(out.hidden_states[-1], out.logits, probe.amp)
