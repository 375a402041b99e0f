"""Squeezing diagnostics (docs/design.md §6): per-batch metrics with TRL's names plus drift and top-token mass.

Δ+ < 0 (``logps/chosen_drift``) means the chosen response has become less likely than under the
reference: the squeezing effect. ``probs/top_token`` is the mean probability of the argmax token
on response positions — mass moving to the argmax is how squeezing shows in the distribution.
"""

from __future__ import annotations

import torch
from torch import Tensor

from logitsam.core.logprobs import IGNORE_INDEX
from logitsam.core.losses import LossOutput


@torch.no_grad()
def top_token_prob(logits: Tensor, labels: Tensor, chunk: int = 1024) -> Tensor:
    """Mean over scored positions of max_v softmax(z)_v; logits (..., V), labels (...) aligned."""
    z = logits.reshape(-1, logits.shape[-1])
    rows = (labels.reshape(-1) != IGNORE_INDEX).nonzero().squeeze(-1)
    if rows.numel() == 0:
        return logits.new_zeros((), dtype=torch.float32)
    total = torch.zeros((), dtype=torch.float32, device=logits.device)
    for idx in rows.split(chunk):
        block = z[idx].float()
        total += (block.max(-1).values - torch.logsumexp(block, -1)).exp().sum()
    return total / rows.numel()


@torch.no_grad()
def preference_metrics(
    out: LossOutput, chosen: Tensor, rejected: Tensor, ref_chosen: Tensor | None, ref_rejected: Tensor | None
) -> dict[str, Tensor]:
    """Batch means (0-d tensors) of rewards, log-probs and their drift against the reference."""
    m = {
        "rewards/chosen": out.chosen_rewards.mean(),
        "rewards/rejected": out.rejected_rewards.mean(),
        "rewards/margins": (out.chosen_rewards - out.rejected_rewards).mean(),
        "rewards/accuracies": (out.chosen_rewards > out.rejected_rewards).float().mean(),
        "logps/chosen": chosen.mean(),
        "logps/rejected": rejected.mean(),
    }
    if ref_chosen is not None and ref_rejected is not None:
        m["logps/chosen_drift"] = (chosen - ref_chosen).mean()
        m["logps/rejected_drift"] = (rejected - ref_rejected).mean()
    return {k: v.detach().float() for k, v in m.items()}
