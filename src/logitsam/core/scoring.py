"""Summed log-probs of labelled tokens under a model, for any batch of sequences (not only pairs).

The reference precompute, the evaluation's KL, the trainer's live reference and the TRL integration
score sequences here, so none of them depends on the training objective.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from logitsam.core.extras import split_labels
from logitsam.core.forward import amp_context, body_forward, full_head, fusable
from logitsam.core.logprobs import IGNORE_INDEX, chunk_rows_for, sequence_logps, shift_for_causal_lm, token_logps
from logitsam.fused import FusedJob, fused_sequence_sums, plan_rows


@torch.no_grad()
def model_sequence_logps(
    model: Any, input_ids: Tensor, attention_mask: Tensor, labels: Tensor, *, chunk_rows: int | None = None
) -> Tensor:
    """(S,) summed log-probs of the labelled tokens (labels (S, T) not yet shifted, −100 unscored).

    Fused head path when the model allows it (no (S, T, V) logits), else the model's logits.
    Any S works (not only pairs): reference precompute, evaluation KL and sharpness use it.
    """
    return _sums(model, input_ids, attention_mask, labels, chunk_rows, shared=False)


@torch.no_grad()
def model_pair_logps_with_shared(
    model: Any, input_ids: Tensor, attention_mask: Tensor, labels: Tensor, *, chunk_rows: int | None = None
) -> tuple[Tensor, Tensor]:
    """((S,) summed log-probs, (S,) the same over each pair's first min(|y+|, |y−|) response tokens) of a pair
    batch (S = 2B, chosen rows first; labels unshifted): LD-DPO's reference, from one forward."""
    both = _sums(model, input_ids, attention_mask, labels, chunk_rows, shared=True)
    s = labels.shape[0]
    return both[:s] + both[s:], both[:s]


def _sums(model, input_ids, attention_mask, labels, chunk_rows, *, shared: bool) -> Tensor:
    """(S,) sums, or (2S,) with ``shared``: every sequence's shared part, then its tail (core/extras.py)."""
    shifted = shift_for_causal_lm(labels)
    lab = split_labels(shifted) if shared else shifted
    fused = fusable(model)
    hidden, logits, amp = body_forward(model, input_ids, attention_mask, fused=fused)
    if logits is not None:
        tl = token_logps(logits, shifted)
        return sequence_logps(tl.repeat(2, 1), lab)[0] if shared else sequence_logps(tl, shifted)[0]
    h = hidden.reshape(-1, hidden.shape[-1])
    # Pair-free: pad S to even so the plan's pair layout applies; sums of real rows are unchanged.
    padded = lab if lab.shape[0] % 2 == 0 else torch.cat([lab, torch.full_like(lab[:1], IGNORE_INDEX)])
    with full_head(model) as head, amp_context(h.device, amp):
        rows = chunk_rows or chunk_rows_for(head.weight.shape[0], h.device)
        plan = plan_rows(padded, rows, ignore_index=IGNORE_INDEX)
        job = FusedJob(plan, padded.shape[0] // 2, None, need_grads=False)
        # a row of the split (2S, T) labels is row r mod S·T of the batch
        return fused_sequence_sums(h[plan.rows % h.shape[0]], head.weight, head.bias, job)[0][: lab.shape[0]]
