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
from logitsam.fused import FusedJob, fused_sequence_sums, plan_rows
from logitsam.sam.common import check_method, check_rho, sam_metrics
from logitsam.sam.logits import logits_sam_loss

Scores = tuple[Tensor | None, Tensor | None]


def pair_logps(
    sums: Tensor, lengths: Tensor, ref: Tensor | None = None, scores: Scores = (None, None)
) -> PreferenceLogps:
    """Split (S = 2B,) per-sequence sums, lengths and reference sums into pairs: chosen = first B.

    scores: (B,) chosen and rejected data-set scores, or None.
    """
    b = lengths.shape[0] // 2
    r = (None, None) if ref is None else (ref[:b], ref[b:])
    return PreferenceLogps(sums[:b], sums[b:], lengths[:b], lengths[b:], *r, *scores)


def subset_logps(
    pairs: Tensor, chosen: Tensor, rejected: Tensor, lengths: Tensor, ref: Tensor | None, scores: Scores
) -> PreferenceLogps:
    """The pairs ``pairs`` (k,) of a batch, given their (k,) chosen and rejected sums."""
    b = lengths.shape[0] // 2
    r = (None, None) if ref is None else (ref[pairs], ref[pairs + b])
    sc = tuple(None if s is None else s[pairs] for s in scores)
    return PreferenceLogps(chosen, rejected, lengths[pairs], lengths[pairs + b], *r, *sc)


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
    ) -> ObjectiveOutput:
        """Loss of a pair batch: input_ids, attention_mask, labels (S, T) unshifted, −100 unscored.

        ref: (S,) reference sums (None for reference-free losses); sam: apply logits-SAM when
        ρ ≠ 0 and gradients are being recorded; sharded: the head is sharded (FSDP / ZeRO-3).
        """
        check_batch(batch, ref)
        labels = shift_for_causal_lm(batch["labels"])
        lengths = (labels != IGNORE_INDEX).sum(-1)
        scores = (batch.get("score_chosen"), batch.get("score_rejected"))
        sam_on = sam and self.rho != 0 and torch.is_grad_enabled()
        # sharded heads fuse under FSDP2 and ZeRO-3 (full_head gathers the head for the sweep); FSDP1 does not
        fused = self.fused and fusable(model)
        fused = fused and (not sharded or gathers_head(model))
        hidden, logits, amp = body_forward(model, batch["input_ids"], batch["attention_mask"], fused=fused)
        vocab = full_shape(output_head(model).weight)[0] if logits is None else logits.shape[-1]
        check_labels(labels, vocab)
        if logits is None:
            with amp_context(hidden.device, amp):  # the precision the model's own head ran in
                res = self._fused(model, hidden, labels, lengths, ref, scores, sam_on)
        else:
            res = self._logits(model, hidden, logits, labels, lengths, ref, scores, sam_on, sharded)
        b = labels.shape[0] // 2
        r = (None, None) if ref is None else (ref[:b], ref[b:])
        res.metrics.update(preference_metrics(res.out, res.sums[:b], res.sums[b:], *r))
        return res

    def _fused(self, model, hidden, labels, lengths, ref, scores, sam_on) -> ObjectiveOutput:
        h = hidden.reshape(-1, hidden.shape[-1])

        def pair_losses(pairs: Tensor, sc: Tensor, sr: Tensor) -> Tensor:
            return self.losses(subset_logps(pairs, sc, sr, lengths, ref, scores)).losses

        with full_head(model) as head:  # FSDP2 / ZeRO-3: gathered for the sweep only
            rows = self.chunk_rows or chunk_rows_for(head.weight.shape[0], h.device)
            plan = plan_rows(labels, rows, ignore_index=IGNORE_INDEX)
            h_r = h[plan.rows]
            need = torch.is_grad_enabled() and (h_r.requires_grad or head.weight.requires_grad)
            job = FusedJob(
                plan, labels.shape[0] // 2, pair_losses, self.rho if sam_on else 0.0, self.method, need,
                adaptive=self.adaptive, regather=regather(model), land_grad=land_grad(model),
                whole_batch=self.spec.batch_coupled,  # per-chunk dL/dsums would be another objective
            )  # fmt: skip
            sums, fused = fused_sequence_sums(h_r, head.weight, head.bias, job)
        out = self.losses(pair_logps(sums, lengths, ref, scores))
        loss = out.losses.mean()
        assert fused.top_token is not None  # the clean sweep always measures it
        metrics = {"probs/top_token": fused.top_token.float()}
        clean = fused.clean_sums.detach()
        if job.rho != 0:
            with torch.no_grad():
                clean_out = self.losses(pair_logps(clean, lengths, ref, scores))
            metrics.update(sam_metrics(clean_out.losses.mean(), loss, self.rho, fused.grad_norm))
            out = clean_out
        return ObjectiveOutput(loss, out, clean, metrics, "fused")

    def _logits(self, model, hidden, logits, labels, lengths, ref, scores, sam_on, sharded) -> ObjectiveOutput:
        def fn(z: Tensor) -> tuple[Tensor, tuple[LossOutput, Tensor]]:
            sums = sequence_logps(token_logps(z, labels), labels)[0]
            out = self.losses(pair_logps(sums, lengths, ref, scores))
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
