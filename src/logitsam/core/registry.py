"""The loss registry: name → :class:`LossSpec`, hyperparameter validation, and :func:`register_loss`.

Built-in losses (core/losses.py) and losses registered from outside the package go through the same
checks: the function's keyword-only parameters are its hyperparameters (each with a default), each
may declare a :class:`~logitsam.core.hparams.Range`, and a registered function is called once on a
small float64 batch so a wrong signature or return value fails at registration, not mid-training.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from dataclasses import replace as replace_fields
from typing import Any, NamedTuple

import torch
from torch import Tensor

from logitsam.core.hparams import Range, check_like_default, nonnegative, one_of, positive
from logitsam.core.losses import (
    LossFn,
    LossOutput,
    PreferenceLogps,
    cpo,
    dpo,
    dpo_abs,
    dpop,
    gate_dpo,
    hinge,
    ipo,
    orpo,
    simpo,
    slic,
    spo_target,
)
from logitsam.core.registry_trl import BETA as _BETA
from logitsam.core.registry_trl import OPTIONS, TRL_LOSSES


@dataclass(frozen=True)
class LossSpec:
    """What a caller needs to know about a loss, so nobody matches on names.

    needs_reference: the trainer must supply ``ref_chosen``/``ref_rejected``.
    batch_coupled: a pair's loss (value or gradient) depends on the other pairs of the batch (normalised
        or sorted across it); found by the registration probe. The fused head then computes dL/dsums
        from the whole batch before its gradient sweep instead of chunk by chunk (exact either way).
    uses: which of the policy's chosen / rejected log-probs reach the losses (found by the probe).
    length_normalized: the preference term works on mean per-token log-probs (rewards are then
        β·mean log-prob) rather than sums; callers always pass sums and lengths.
    defaults: hyperparameters and their default values; any other keyword is an error.
    ranges: the valid values of each hyperparameter (a key without one only has to be a finite
        number / a value of its default's type); :func:`resolve_hparams` enforces them.
    """

    name: str
    fn: LossFn
    needs_reference: bool
    length_normalized: bool
    defaults: Mapping[str, Any] = field(default_factory=dict)
    summary: str = ""
    ranges: Mapping[str, Range] = field(default_factory=dict)
    batch_coupled: bool = False  # a pair's loss depends on other pairs: the fused head takes the whole batch
    uses: tuple[str, ...] = ("chosen", "rejected")  # the policy log-probs the losses are differentiated through
    parts: tuple[tuple[LossSpec, float, Mapping[str, Any]], ...] = ()  # a weighted sum's terms (core/combined.py)


def _hyperparameters(name: str, fn: LossFn) -> dict[str, Any]:
    """{keyword-only parameter: default} of a loss function; anything else in its signature is an error."""
    if not callable(fn):
        raise TypeError(f"loss {name!r}: fn must be a function (inp, *, hyperparameters...), got {type(fn).__name__}")
    params = list(inspect.signature(fn).parameters.values())
    if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        raise TypeError(f"loss {name!r}: fn must take the PreferenceLogps as its first positional argument")
    defaults = {}
    for p in params[1:]:
        if p.kind != p.KEYWORD_ONLY:
            raise TypeError(f"loss {name!r}: hyperparameter {p.name!r} must be keyword-only (after a '*')")
        if p.default is p.empty:
            raise TypeError(f"loss {name!r}: hyperparameter {p.name!r} needs a default value")
        defaults[p.name] = p.default
    return defaults


def _spec(name: str, fn: LossFn, ref: bool, norm: bool, summary: str, ranges: dict[str, Range]) -> LossSpec:
    defaults = _hyperparameters(name, fn)
    if set(ranges) != set(defaults):  # a built-in must declare the range of every hyperparameter
        raise AssertionError(f"loss {name!r}: ranges for {sorted(ranges)} but hyperparameters {sorted(defaults)}")
    return LossSpec(name, fn, ref, norm, defaults, summary, ranges)


# Why each range: β is a temperature on a log-ratio, so β < 0 trains toward the rejected response and
# β = 0 learns nothing (registry_trl.BETA); weights and margins below zero invert the term they scale.
_NLL_MODE = one_of("sum", "mean", why="summed or token-mean NLL of the chosen response")
_NLL_WEIGHT = nonnegative("λ < 0 pushes the chosen response's likelihood down")

LOSSES: dict[str, LossSpec] = {
    s.name: s
    for s in (
        _spec(
            "dpo",
            dpo,
            True,
            False,
            "DPO / cDPO (label_smoothing)",
            {
                "beta": _BETA,
                "label_smoothing": Range(
                    0.0, 0.5, high_open=True, why="ε is the assumed label-flip rate; ε ≥ 0.5 prefers rejected"
                ),
                **OPTIONS,
            },
        ),
        _spec("hinge", hinge, True, False, "reference-based hinge (TRL 'hinge')", {"beta": _BETA, **OPTIONS}),
        _spec("ipo", ipo, True, True, "IPO, length-normalised log-ratios", {"beta": _BETA, **OPTIONS}),
        _spec(
            "slic",
            slic,
            False,
            False,
            "SLiC-HF (paper Table 5)",
            {
                "margin": nonnegative("a negative margin is met while the rejected response is more likely"),
                "nll_weight": _NLL_WEIGHT,
                "nll_mode": _NLL_MODE,
            },
        ),
        _spec(
            "cpo",
            cpo,
            False,
            False,
            "CPO (paper Table 5)",
            {"beta": _BETA, "nll_weight": _NLL_WEIGHT, "nll_mode": _NLL_MODE},
        ),
        _spec(
            "simpo",
            simpo,
            False,
            True,
            "SimPO",
            {"beta": _BETA, "gamma": nonnegative("γ is SimPO's target reward margin")},
        ),
        _spec(
            "gate_dpo",
            gate_dpo,
            True,
            False,
            "Gate-DPO: gated rejected gradient",
            {
                "beta": _BETA,
                "alpha": positive("α is the gate's steepness; α ≤ 0 removes or inverts the gate"),
                "tau": Range(0.0, 1.0, why="τ is a threshold on a probability"),
            },
        ),
        _spec(
            "dpo_abs",
            dpo_abs,
            True,
            False,
            "DPO + absolute-improvement penalty (reconstruction)",
            {"beta": _BETA, "lam": nonnegative("λ < 0 rewards the chosen response falling below the reference")},
        ),
        _spec(
            "dpop",
            dpop,
            True,
            False,
            "DPO-Positive (Smaug): penalty on the chosen falling below the reference, inside the sigmoid",
            {"beta": _BETA, "lam": nonnegative("λ < 0 rewards the chosen response falling below the reference")},
        ),
        _spec("orpo", orpo, False, True, "ORPO: odds-ratio preference + chosen NLL", {"beta": _BETA}),
        _spec(
            "spo_target",
            spo_target,
            True,
            False,
            "finite-target loss (reconstruction)",
            {
                "beta": _BETA,
                "target": nonnegative("the target margin βδ; < 0 targets preferring the rejected response"),
                "score_scale": positive("maps score gaps to margins; ≤ 0 removes or flips the preference"),
            },
        ),
        *(_spec(*row) for row in TRL_LOSSES),
    )
}


class HyperparameterError(ValueError):
    """A hyperparameter is unknown, of the wrong type, NaN/inf or out of range; names the loss and key."""

    def __init__(self, loss: str, key: str, problem: str) -> None:
        super().__init__(f"loss {loss!r}: {problem}")
        self.loss, self.key, self.problem = loss, key, problem


BUILTIN = frozenset(LOSSES)


# The probe batch: chosen and rejected (and their log-ratios) are ranked differently and no subset has the
# batch's mean, so a loss that sorts or normalises across the batch differs on subsets (the fused chunks).
_PROBE = {
    "chosen": (-7.0, -19.0, -3.0),
    "rejected": (-15.0, -9.0, -18.0),
    "chosen_lengths": (4.0, 7.0, 10.0),
    "rejected_lengths": (6.0, 3.0, 9.0),
    "ref_chosen": (-6.5, -20.5, -1.0),
    "ref_rejected": (-15.5, -8.0, -20.5),
}
_SUBSETS = ((0,), (1, 2), (2,), (0, 1))  # contiguous runs of pairs, as the fused head's chunks hold them


def _probe_call(spec: LossSpec, pairs: tuple[int, ...]) -> tuple[Any, Tensor | None, Tensor | None]:
    """fn's output on ``pairs`` of the probe batch and the gradients of its summed losses w.r.t. the (|pairs|,)
    chosen and rejected log-probs (None: not reached, or no LossOutput with differentiable losses)."""
    t = {k: torch.tensor([v[i] for i in pairs], dtype=torch.float64) for k, v in _PROBE.items()}
    c, r = t["chosen"].requires_grad_(), t["rejected"].requires_grad_()
    ref = (t["ref_chosen"], t["ref_rejected"]) if spec.needs_reference else (None, None)
    out = spec.fn(PreferenceLogps(c, r, t["chosen_lengths"], t["rejected_lengths"], *ref), **spec.defaults)
    losses = getattr(out, "losses", None)
    if not isinstance(out, LossOutput) or not isinstance(losses, Tensor) or not losses.requires_grad:
        return out, None, None
    gc, gr = torch.autograd.grad(losses.sum(), (c, r), allow_unused=True)
    return out, gc, gr


def _probe(spec: LossSpec) -> tuple[bool, tuple[str, ...]]:
    """Call a new loss on 3 float64 pairs: it must return a LossOutput of finite (3,) tensors, and its losses
    must reach the policy log-probs (else training would silently learn nothing). Returns (batch_coupled,
    uses): whether losses or gradients of subsets of pairs differ from the whole batch's, and which of
    chosen / rejected the losses are differentiated through."""
    try:
        out, gc, gr = _probe_call(spec, (0, 1, 2))
    except Exception as e:
        raise TypeError(f"loss {spec.name!r}: calling it on a 3-pair test batch failed: {type(e).__name__}: {e}") from e
    if not isinstance(out, LossOutput):
        raise TypeError(f"loss {spec.name!r}: must return a LossOutput, got {type(out).__name__}")
    for key in ("losses", "chosen_rewards", "rejected_rewards"):
        v = getattr(out, key)
        if not isinstance(v, torch.Tensor) or v.shape != (3,):
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise TypeError(f"loss {spec.name!r}: LossOutput.{key} must have shape (B,) = (3,), got {shape}")
        if not torch.isfinite(v).all():
            raise TypeError(f"loss {spec.name!r}: LossOutput.{key} is not finite on the test batch")
    if gc is None and gr is None:
        raise TypeError(f"loss {spec.name!r}: its losses do not depend on the policy log-probs (no gradient)")
    uses = tuple(side for side, g in (("chosen", gc), ("rejected", gr)) if g is not None)
    zeros = torch.zeros(3, dtype=torch.float64)
    full = [out.losses.detach(), zeros if gc is None else gc, zeros if gr is None else gr]
    for pairs in _SUBSETS:
        try:
            part, pc, pr = _probe_call(spec, pairs)
        except Exception:  # a loss that cannot run on fewer pairs needs the whole batch anyway
            return True, uses
        idx = list(pairs)
        got = [getattr(part, "losses", None), zeros[idx] if pc is None else pc, zeros[idx] if pr is None else pr]
        for g, want in zip(got, full, strict=True):
            if not isinstance(g, Tensor) or g.shape != (len(idx),):
                return True, uses
            if not torch.allclose(g.detach(), want[idx], rtol=1e-9, atol=1e-12):
                return True, uses
    return False, uses


for _name, _s in LOSSES.items():  # the built-ins' coupling and sides: what the probe finds, as for any loss
    _coupled, _uses = _probe(_s)
    LOSSES[_name] = replace_fields(_s, batch_coupled=_coupled, uses=_uses)


def register_loss(
    name: str,
    fn: LossFn,
    *,
    needs_reference: bool,
    length_normalized: bool = False,
    ranges: Mapping[str, Range] | None = None,
    summary: str = "",
    replace: bool = False,
    batch_coupled: bool = False,
) -> LossSpec:
    """Add a loss to the registry, usable by name everywhere a built-in is (config, trainer, TRL drop-in).

    fn(inp: PreferenceLogps, *, hparam=default, ...) -> LossOutput, per-example losses (B,) from the
    summed log-probs and lengths in ``inp`` (and ``ref_*`` when ``needs_reference``). Every
    hyperparameter is keyword-only with a default; ``ranges`` may give any of them a
    :class:`~logitsam.core.hparams.Range` (the others must keep their default's type and be finite).
    The function is called on a small batch and its subsets to check what it returns, which log-probs it
    uses, and whether a pair's loss depends on the other pairs (``batch_coupled``: e.g. normalised or
    sorted across the batch; the fused head then takes dL/dsums from the whole batch, exact with
    logits-SAM). ``batch_coupled=True`` declares a coupling the probe might not see. A built-in name
    can never be replaced; a name registered before only with ``replace=True``. Returns the new spec.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"register_loss: name must be an identifier-like string, got {name!r}")
    if name in BUILTIN:
        raise ValueError(f"register_loss: {name!r} is a built-in loss and cannot be replaced")
    if name in LOSSES and not replace:
        raise ValueError(f"register_loss: {name!r} is already registered (pass replace=True to replace it)")
    defaults = _hyperparameters(name, fn)
    ranges = dict(ranges or {})
    unknown = sorted(set(ranges) - set(defaults))
    if unknown:
        raise ValueError(
            f"loss {name!r}: ranges for {unknown}, which are not hyperparameters of fn ({sorted(defaults)})"
        )
    for key, rng in ranges.items():
        if not isinstance(rng, Range):
            raise TypeError(f"loss {name!r}: ranges[{key!r}] must be a logitsam.core.hparams.Range")
        try:
            rng.check(defaults[key])
        except ValueError as e:
            raise ValueError(
                f"loss {name!r}: the default {key} = {defaults[key]!r} is outside its range: {e}"
            ) from None
    spec = LossSpec(name, fn, bool(needs_reference), bool(length_normalized), defaults, summary, ranges)
    coupled, uses = _probe(spec)
    spec = replace_fields(spec, batch_coupled=coupled or bool(batch_coupled), uses=uses)
    LOSSES[name] = spec
    return spec


def unregister_loss(name: str) -> None:
    """Remove a loss added with :func:`register_loss` (built-ins stay)."""
    if name in BUILTIN:
        raise ValueError(f"unregister_loss: {name!r} is a built-in loss")
    LOSSES.pop(name, None)


def get_loss(name: str) -> LossSpec:
    """Look a loss up by name; an unknown name raises ValueError listing the known ones."""
    if not isinstance(name, str) or name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def resolve_hparams(spec: LossSpec, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults of ``spec`` updated with ``overrides``, every value checked against its range.

    Raises :class:`HyperparameterError` (a ValueError) naming the loss and the key for an unknown
    key, a wrong type, NaN/inf or a value outside the declared range.
    """
    params = dict(spec.defaults)
    for key, value in (overrides or {}).items():
        if key not in params:
            known = ", ".join(sorted(params)) or "none"
            raise HyperparameterError(spec.name, str(key), f"no hyperparameter {key!r} (known: {known})")
        params[key] = value
    for key, value in params.items():
        rng = spec.ranges.get(key)
        try:
            params[key] = rng.check(value) if rng is not None else check_like_default(value, spec.defaults[key])
        except ValueError as e:
            raise HyperparameterError(spec.name, key, f"{key} = {value!r}: {e}") from None
    return params


class LossParamRow(NamedTuple):
    """One row of :func:`describe_losses`."""

    loss: str
    hparam: str
    default: Any
    range: str
    why: str
    summary: str


def describe_losses() -> list[LossParamRow]:
    """Every registered loss's hyperparameters with default and valid range (for ``logitsam losses``)."""
    rows = []
    for name in sorted(LOSSES):
        spec = LOSSES[name]
        kind = ("reference" if spec.needs_reference else "reference-free") + (
            ", length-normalised" if spec.length_normalized else ", summed log-probs"
        )
        kind += "".join(f", {side} only" for side in spec.uses if len(spec.uses) == 1)
        kind += ", couples the batch's pairs" if spec.batch_coupled else ""
        summary = f"{spec.summary} [{kind}]"
        for key, default in spec.defaults.items():
            rng = spec.ranges.get(key)
            text, why = (rng.describe(), rng.why) if rng is not None else ("any", "")
            rows.append(LossParamRow(name, key, default, text, why, summary))
        if not spec.defaults:
            rows.append(LossParamRow(name, "", None, "", "", summary))
    return rows


def compute_loss(name: str, inp: PreferenceLogps, **hparams: Any) -> LossOutput:
    """Evaluate the registered loss ``name`` on ``inp`` with validated hyperparameters."""
    spec = get_loss(name)
    return spec.fn(inp, **resolve_hparams(spec, hparams))
