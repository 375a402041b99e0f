"""Summed log-probs of labelled tokens under a model, for any batch of sequences (not only pairs).

The reference precompute, the evaluation's KL, the trainer's live reference and the TRL integration
score sequences here, so none of them depends on the training objective.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

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
    shifted = shift_for_causal_lm(labels)
    fused = fusable(model)
    hidden, logits, amp = body_forward(model, input_ids, attention_mask, fused=fused)
    if logits is not None:
        return sequence_logps(token_logps(logits, shifted), shifted)[0]
    h = hidden.reshape(-1, hidden.shape[-1])
    # Pair-free: pad S to even so the plan's pair layout applies; sums of real rows are unchanged.
    padded = shifted if shifted.shape[0] % 2 == 0 else torch.cat([shifted, torch.full_like(shifted[:1], IGNORE_INDEX)])
    with full_head(model) as head, amp_context(h.device, amp):
        rows = chunk_rows or chunk_rows_for(head.weight.shape[0], h.device)
        plan = plan_rows(padded, rows, ignore_index=IGNORE_INDEX)
        job = FusedJob(plan, padded.shape[0] // 2, None, need_grads=False)
        return fused_sequence_sums(h[plan.rows], head.weight, head.bias, job)[0][: shifted.shape[0]]
