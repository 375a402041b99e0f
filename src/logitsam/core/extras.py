"""Inputs some losses need besides the summed log-probs (core/combined.py: ``extra_inputs``).

- LD-DPO (``ld_alpha``): each pair's first min(|y+|, |y−|) response tokens, the *shared* part, as labels.
  The fused head sums log-probs per labelled sequence only, so the objective gives it a (2S, T) label
  matrix — every sequence's shared part, then its tail — and reads a sequence's full sum as shared + tail:
  one sweep, the rows themselves unchanged (a row of the 2S × T matrix is row ``r mod S·T`` of the batch).
- WPO (``use_weighting``): per sequence, the detached mean over response tokens of
  log p(y_t) − log Σ_v p(v)² of the clean policy. log Σ_v p(v)² needs the whole vocabulary of every
  scored row: on the logits path from the model's logits (:func:`wpo_log_weights`); on the fused path
  the clean sweep measures it on the tiles it already holds (fused/sweep.py: ``SweepSpec.aligned``),
  so WPO adds no head product there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from logitsam.core.logprobs import IGNORE_INDEX, chunk_rows_for


def shared_labels(labels: Tensor) -> Tensor:
    """(S = 2B, T) shifted labels, chosen rows first -> the same with only each pair's first
    min(|y+|, |y−|) scored tokens kept (LD-DPO's shared part; TRL's ``shared_mask``), the rest −100."""
    scored = labels != IGNORE_INDEX
    pos = scored.cumsum(-1)
    lens = scored.sum(-1)
    b = labels.shape[0] // 2
    shared = torch.minimum(lens[:b], lens[b:]).repeat(2)
    return labels.masked_fill(~(scored & (pos <= shared[:, None])), IGNORE_INDEX)


def split_labels(labels: Tensor) -> Tensor:
    """(S, T) shifted labels -> (2S, T): every sequence's shared part (:func:`shared_labels`), then its tail."""
    shared = shared_labels(labels)
    return torch.cat([shared, labels.masked_fill(shared != IGNORE_INDEX, IGNORE_INDEX)])


def _aligned(z: Tensor, y: Tensor) -> Tensor:
    """(n,) log p(y) − log Σ_v p(v)² of (n, V) logits z, in float32 or wider."""
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    lp = F.log_softmax(z, dim=-1)
    return lp.gather(1, y[:, None]).squeeze(1) - torch.logsumexp(2 * lp, dim=-1)


@torch.no_grad()
def wpo_log_weights(labels: Tensor, logits: Tensor, *, chunk_rows: int | None = None) -> Tensor:
    """(S,) WPO's log-weight per sequence: mean over its scored tokens of log p(y_t) − log Σ_v p(v)²
    (Zhou et al. 2024, eq. 2; TRL's ``aligned_logps``), detached.

    labels: (S, T) shifted, −100 unscored; logits (S, T, V), read ``chunk_rows`` scored rows at a time
    (the fused path measures the same in its sweep, fused/sweep.py).
    """
    v, dtype = logits.shape[-1], logits.dtype
    s, t = labels.shape
    flat = labels.reshape(-1)
    rows = (flat != IGNORE_INDEX).nonzero().squeeze(-1)
    step = chunk_rows or chunk_rows_for(v, rows.device)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    total = torch.zeros(s, dtype=acc, device=labels.device)
    flat_logits = logits.reshape(-1, v)
    for idx in rows.split(step):
        total.index_add_(0, idx // t, _aligned(flat_logits[idx], flat[idx]).to(acc))
    return total / (flat != IGNORE_INDEX).reshape(s, t).sum(-1).clamp(min=1)
