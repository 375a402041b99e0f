"""The objective: a batch of preference pairs -> scored-token log-probs -> loss (+ logits-SAM).

This is the one place that splits a batch into chosen and rejected sequences (chosen rows first,
then rejected), builds :class:`~logitsam.core.losses.PreferenceLogps` and applies a registered loss.
The trainer, the reference precompute, ``sharpness`` and the evaluation all call it.

Two paths, one result:
- fused (default): the model returns its last hidden state only; the head runs on scored rows
  in chunks with the gradient (and logits-SAM) made in the same passes (:mod:`logitsam.fused`);
- logits: the model's full logits, for FSDP1 heads (logits-SAM by ``gram``, the head never gathered),
  heads that are not a plain linear layer and ``fused=False``.

Perturbation scope: ε is computed per micro-batch from that micro-batch's gradient, on each rank
separately (DDP ranks do not all-reduce the head gradient before perturbing; like SAM's
m-sharpness). With gradient accumulation every micro-batch gets its own ε.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from logitsam.core.combined import extra_inputs
from logitsam.core.extras import shared_labels, split_labels, wpo_log_weights
from logitsam.core.forward import (
    amp_context,
    body_forward,
    full_head,
    full_shape,
    fusable,
    gathers_head,
    land_grad,
    output_head,
    regather,
)
from logitsam.core.logprobs import IGNORE_INDEX, chunk_rows_for, sequence_logps, shift_for_causal_lm, token_logps
from logitsam.core.losses import LossOutput, PreferenceLogps
from logitsam.core.metrics import preference_metrics, top_token_prob
from logitsam.core.registry import LossSpec, resolve_hparams
from logitsam.fused import FusedJob, SweepAux, fused_sequence_sums, plan_rows
from logitsam.sam.common import check_method, check_rho, sam_metrics
from logitsam.sam.logits import logits_sam_loss

Scores = tuple[Tensor | None, Tensor | None]
Extra = dict[str, Tensor]  # (S,) per sequence: "shared", "ref_shared" (LD-DPO), "wpo" (WPO); see core/extras.py
_FIELDS = {
    "shared": ("chosen_shared", "rejected_shared"),
    "ref_shared": ("ref_chosen_shared", "ref_rejected_shared"),
    "wpo": ("chosen_wpo", "rejected_wpo"),
}


def _fields(extra: Extra | None, chosen: Any, rejected: Any) -> dict[str, Tensor]:
    pick = (chosen, rejected)
    return {f: extra[k][i] for k, fs in _FIELDS.items() if extra and k in extra for f, i in zip(fs, pick, strict=True)}


def pair_logps(
    sums: Tensor, lengths: Tensor, ref: Tensor | None = None, scores: Scores = (None, None), extra: Extra | None = None
) -> PreferenceLogps:
    """Split (S = 2B,) per-sequence sums, lengths, reference sums and ``extra`` into pairs: chosen = first B.

    scores: (B,) chosen and rejected data-set scores, or None.
    """
    b = lengths.shape[0] // 2
    r = (None, None) if ref is None else (ref[:b], ref[b:])
    return PreferenceLogps(
        sums[:b], sums[b:], lengths[:b], lengths[b:], r[0], r[1], scores[0], scores[1],
        **_fields(extra, slice(0, b), slice(b, None)),
    )  # fmt: skip


def subset_logps(
    pairs: Tensor,
    chosen: Tensor,
    rejected: Tensor,
    lengths: Tensor,
    ref: Tensor | None,
    scores: Scores,
    extra: Extra | None = None,
) -> PreferenceLogps:
    """The pairs ``pairs`` (k,) of a batch, given their (k,) chosen and rejected sums."""
    b = lengths.shape[0] // 2
    r = (None, None) if ref is None else (ref[pairs], ref[pairs + b])
    sc = tuple(None if s is None else s[pairs] for s in scores)
    return PreferenceLogps(
        chosen, rejected, lengths[pairs], lengths[pairs + b], *r, *sc, **_fields(extra, pairs, pairs + b)
    )


@dataclass
class ObjectiveOutput:
    """loss (scalar, with graph; at W + ε under logits-SAM), the clean LossOutput and (S,) sums,
    and 0-d metric tensors (TRL names, drift, top-token mass, ``sam/*``), still on the device."""

    loss: Tensor
    out: LossOutput
    sums: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)
    path: str = "fused"


class Objective:
    """A registered loss with its hyperparameters and logits-SAM settings, applied to models.

    spec / params: from :mod:`logitsam.core.losses`; rho, method: logits-SAM (ρ = 0: off; method
    weight | gram | chunked | auto); adaptive: ε ∝ |W|⊙g (weight/chunked); chunk_rows: rows of
    logits per chunk in the fused path (None: sized for the device); fused: False forces the
    full-logits path.
    """

    def __init__(
        self,
        spec: LossSpec,
        params: dict[str, Any],
        *,
        rho: float = 0.0,
        method: str = "auto",
        chunk_rows: int | None = None,
        fused: bool = True,
        adaptive: bool = False,
    ) -> None:
        check_method(method)
        bad_rows = isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1
        if chunk_rows is not None and bad_rows:
            raise ValueError(f"chunk_rows must be None or an int ≥ 1, got {chunk_rows!r}")
        self.spec, self.params = spec, resolve_hparams(spec, params)  # ranges checked here too
        self.rho, self.method, self.chunk_rows, self.fused = check_rho(rho), method, chunk_rows, fused
        self.adaptive = bool(adaptive)
        self.extras = extra_inputs(spec, self.params)  # "shared" (LD-DPO), "wpo" (WPO): made here per batch

    def losses(self, inp: PreferenceLogps) -> LossOutput:
        return self.spec.fn(inp, **self.params)

    def __call__(
        self,
        model: Any,
        batch: dict[str, Tensor],
        ref: Tensor | None = None,
        *,
        sam: bool = True,
        sharded: bool = False,
        ref_shared: Tensor | None = None,
    ) -> ObjectiveOutput:
        """Loss of a pair batch: input_ids, attention_mask, labels (S, T) unshifted, −100 unscored.

        ref: (S,) reference sums (None for reference-free losses); sam: apply logits-SAM when
        ρ ≠ 0 and gradients are being recorded; sharded: the head is sharded (FSDP / ZeRO-3);
        ref_shared: (S,) the reference's sums over the shared prefixes (LD-DPO: ``"shared" in self.extras``).
        """
        check_batch(batch, ref)
        extra: Extra = {}
        if "shared" in self.extras and ref is not None:
            if ref_shared is None or tuple(ref_shared.shape) != tuple(ref.shape):
                raise ValueError("ld_alpha ≠ 1: pass ref_shared, the reference's (S,) sums over the shared prefixes")
            extra["ref_shared"] = ref_shared
        labels = shift_for_causal_lm(batch["labels"])
        lengths = (labels != IGNORE_INDEX).sum(-1)
        scores = (batch.get("score_chosen"), batch.get("score_rejected"))
        sam_on = sam and self.rho != 0 and torch.is_grad_enabled()
        # sharded heads fuse under FSDP2 and ZeRO-3 (full_head gathers the head for the sweep); FSDP1 does not
        fused = self.fused and fusable(model)
        fused = fused and (not sharded or gathers_head(model))
        hidden, logits, amp = body_forward(model, batch["input_ids"], batch["attention_mask"], fused=fused)
        if logits is None:
            head = output_head(model)
            assert head is not None  # body_forward fuses only a plain linear head
            vocab = full_shape(head.weight)[0]  # a partitioned ZeRO-3 head's own shape is a placeholder
        else:
            vocab = logits.shape[-1]
        check_labels(labels, vocab)
        if logits is None:
            with amp_context(hidden.device, amp):  # the precision the model's own head ran in
                res = self._fused(model, hidden, labels, lengths, ref, scores, sam_on, extra)
        else:
            if amp is not None and logits.dtype != hidden.dtype:  # the head ran under autocast: the loss math
                logits = logits.to(hidden.dtype)  # in the hidden state's precision, as the fused path does it
            with amp_context(hidden.device, amp):  # logits-SAM's head products in the precision the head ran in
                res = self._logits(model, hidden, logits, labels, lengths, ref, scores, sam_on, sharded, extra)
        b = labels.shape[0] // 2
        r = (None, None) if ref is None else (ref[:b], ref[b:])
        res.metrics.update(preference_metrics(res.out, res.sums[:b], res.sums[b:], *r))
        return res

    def _fused(self, model, hidden, labels, lengths, ref, scores, sam_on, extra) -> ObjectiveOutput:
        h = hidden.reshape(-1, hidden.shape[-1])
        n = labels.shape[0]
        # LD-DPO: the sweep sums every sequence's shared part and tail separately (2S "sequences": virtual
        # pair k = sequence k's shared part and tail); a pair's loss needs four of them, so whole batch.
        split = "shared" in self.extras

        wpo = "wpo" in self.extras  # WPO: the clean sweep sums log p(y_t) − log Σ_v p(v)² per sequence

        def extras_of(aux: SweepAux) -> Extra:
            if not wpo:
                return extra
            assert aux.aligned is not None  # the job asks the sweep for them
            al = aux.aligned.detach()  # the clean weights, held fixed under logits-SAM: a mean per sequence
            return {**extra, "wpo": (al[:n] + al[n:] if split else al) / lengths}

        def with_shared(raw: Tensor, aux: SweepAux) -> tuple[Tensor, Extra]:
            ex = extras_of(aux)
            return (raw[:n] + raw[n:], {**ex, "shared": raw[:n]}) if split else (raw, ex)

        def pair_losses(pairs: Tensor, sc: Tensor, sr: Tensor, aux: SweepAux) -> Tensor:
            if split:  # always every virtual pair (whole_batch): (shared sums, tail sums) of all S sequences
                full, ex = with_shared(torch.cat([sc, sr]), aux)
                losses = self.losses(pair_logps(full, lengths, ref, scores, ex)).losses
                return torch.cat([losses, losses])  # each pair once per virtual pair: sum / 2B = the mean
            ex = extras_of(aux)  # complete for the group's own sequences, the ones subset_logps reads
            return self.losses(subset_logps(pairs, sc, sr, lengths, ref, scores, ex)).losses

        with full_head(model) as head:  # FSDP2 / ZeRO-3: gathered for the sweep only
            rows = self.chunk_rows or chunk_rows_for(head.weight.shape[0], h.device)
            lab = split_labels(labels) if split else labels
            plan = plan_rows(lab, rows, ignore_index=IGNORE_INDEX)
            h_r = h[plan.rows % h.shape[0]]  # row r of the (2S, T) split labels is row r mod S·T of the batch
            need = torch.is_grad_enabled() and (h_r.requires_grad or head.weight.requires_grad)
            job = FusedJob(
                plan, lab.shape[0] // 2, pair_losses, self.rho if sam_on else 0.0, self.method, need,
                adaptive=self.adaptive, regather=regather(model), land_grad=land_grad(model),
                whole_batch=self.spec.batch_coupled or split,  # per-chunk dL/dsums would be another objective
                aligned=wpo,  # WPO's statistic from the clean sweep's own tiles, no head pass of its own
            )  # fmt: skip
            raw, fused = fused_sequence_sums(h_r, head.weight, head.bias, job)
            sums, ex = with_shared(raw, fused.aux)
        out = self.losses(pair_logps(sums, lengths, ref, scores, ex))
        loss = out.losses.mean()
        assert fused.top_token is not None  # the clean sweep always measures it
        metrics = {"probs/top_token": fused.top_token.float()}
        clean, clean_ex = with_shared(fused.clean_sums.detach(), fused.aux)
        if job.rho != 0:
            with torch.no_grad():
                clean_out = self.losses(pair_logps(clean, lengths, ref, scores, clean_ex))
            assert fused.grad_norm is not None  # measured whenever ρ ≠ 0
            metrics.update(sam_metrics(clean_out.losses.mean(), loss, self.rho, fused.grad_norm))
            out = clean_out
        return ObjectiveOutput(loss, out, clean, metrics, "fused")

    def _logits(self, model, hidden, logits, labels, lengths, ref, scores, sam_on, sharded, extra) -> ObjectiveOutput:
        shared = shared_labels(labels) if "shared" in self.extras else None
        if "wpo" in self.extras:  # from the clean logits, held fixed under logits-SAM
            extra = {**extra, "wpo": wpo_log_weights(labels, logits.detach(), chunk_rows=self.chunk_rows)}

        def fn(z: Tensor) -> tuple[Tensor, tuple[LossOutput, Tensor]]:
            lp = token_logps(z, labels)
            sums = sequence_logps(lp, labels)[0]
            ex = extra if shared is None else {**extra, "shared": sequence_logps(lp, shared)[0]}
            out = self.losses(pair_logps(sums, lengths, ref, scores, ex))
            return out.losses.mean(), (out, sums.detach())

        metrics = {"probs/top_token": top_token_prob(logits.detach(), labels)}
        if sam_on:
            head = None if sharded else output_head(model)
            weight = None if head is None else head.weight
            bias = None if head is None else head.bias
            method = "gram" if weight is None else self.method
            res = logits_sam_loss(
                fn, hidden, weight, bias, rho=self.rho, method=method, logits=logits, adaptive=self.adaptive
            )
            loss, (out, sums) = res.loss, res.aux_pre
            metrics.update(sam_metrics(res.loss_pre, res.loss_post, self.rho, res.grad_norm))
        else:
            loss, (out, sums) = fn(logits)
        return ObjectiveOutput(loss, out, sums, metrics, "logits")


def check_batch(batch: dict[str, Tensor], ref: Tensor | None) -> None:
    """Keys, shapes and dtypes of a pair batch, each problem named (no device sync)."""
    missing = [k for k in ("input_ids", "attention_mask", "labels") if k not in batch]
    if missing:
        raise ValueError(f"the batch lacks {', '.join(missing)} (input_ids, attention_mask, labels are required)")
    ids, labels = batch["input_ids"], batch["labels"]
    for name in ("input_ids", "labels"):
        t = batch[name]
        if not isinstance(t, Tensor) or t.dim() != 2 or t.is_floating_point() or t.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer (S, T) tensor, got {getattr(t, 'dtype', type(t))}")
    if labels.shape != ids.shape or tuple(batch["attention_mask"].shape) != tuple(ids.shape):
        raise ValueError(
            f"labels {tuple(labels.shape)} and attention_mask {tuple(batch['attention_mask'].shape)} "
            f"must have input_ids' shape {tuple(ids.shape)}"
        )
    s = ids.shape[0]
    if s < 2 or s % 2:
        raise ValueError(f"a pair batch has 2B sequences (chosen rows, then rejected), got {s}")
    if ref is not None and tuple(ref.shape) != (s,):
        raise ValueError(f"reference log-probs must have shape ({s},) (chosen, then rejected), got {tuple(ref.shape)}")
    for key in ("score_chosen", "score_rejected"):
        sc = batch.get(key)
        if sc is not None and (not isinstance(sc, Tensor) or sc.dtype == torch.bool or tuple(sc.shape) != (s // 2,)):
            got = f"shape {tuple(sc.shape)}, {sc.dtype}" if isinstance(sc, Tensor) else type(sc).__name__
            raise ValueError(f"{key} must be a numeric tensor of shape ({s // 2},) (one score per pair), got {got}")


def check_labels(labels: Tensor, vocab: int) -> None:
    """Shifted labels are token ids in [0, V) or −100, and every sequence scores a token (one sync)."""
    scored = labels != IGNORE_INDEX
    bad_id, empty = torch.stack([(scored & ((labels < 0) | (labels >= vocab))).any(), (~scored.any(-1)).any()]).tolist()
    if bad_id:
        raise ValueError(f"labels must be token ids in [0, {vocab}) or {IGNORE_INDEX} (unscored)")
    if empty:
        raise ValueError("every sequence needs at least one scored (label ≠ −100) token after the shift")
