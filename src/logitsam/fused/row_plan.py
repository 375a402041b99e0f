"""Row plan of the fused head: the scored rows of a batch ordered by preference pair and packed into
chunks that hold whole pairs where they fit (docs/design.md §5)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Group:
    """Pairs whose rows are processed together: rows [start, end) of the plan, cut into chunks."""

    pairs: Tensor
    chunks: list[tuple[int, int]]


@dataclass
class RowPlan:
    """Scored rows of a (S = 2B, T) label matrix, ordered by pair (chosen rows, then rejected)."""

    rows: Tensor  # (N_r,) flat indices into S·T
    labels: Tensor  # (N_r,)
    seq: Tensor  # (N_r,) sequence index in [0, S)
    groups: list[Group]
    n_seqs: int
    chunk_rows: int = 1  # the budget the chunks were cut to (a tile of chunk_rows × V logits)


def plan_rows(labels: Tensor, chunk_rows: int, *, ignore_index: int) -> RowPlan:
    """Order scored rows by pair and pack whole pairs into chunks of at most ``chunk_rows`` rows.

    labels: (S, T) with chosen sequences first (pair j = sequences j and j + S/2), ``ignore_index``
    marking unscored tokens (the caller's convention: core/logprobs.py). One host sync.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be ≥ 1, got {chunk_rows}")
    s, t = labels.shape
    n_pairs = s // 2
    flat = labels.reshape(-1)
    rows = (flat != ignore_index).nonzero().squeeze(-1)
    seq = rows // t
    pair = seq % n_pairs
    order = torch.sort(pair * 2 + seq // n_pairs, stable=True).indices
    rows, seq, pair = rows[order], seq[order], pair[order]
    counts = torch.bincount(pair, minlength=n_pairs).tolist()
    groups: list[Group] = []
    cur: list[int] = []
    start = cur_rows = 0

    def flush() -> None:
        nonlocal cur, start, cur_rows
        if cur:
            chunks = [(start, start + cur_rows)] if cur_rows else []
            groups.append(Group(torch.tensor(cur, device=labels.device), chunks))
        start, cur, cur_rows = start + cur_rows, [], 0

    for j, c in enumerate(counts):
        if c > chunk_rows:  # a pair longer than a chunk: its own group, swept twice
            flush()
            chunks = [(a, min(a + chunk_rows, start + c)) for a in range(start, start + c, chunk_rows)]
            groups.append(Group(torch.tensor([j], device=labels.device), chunks))
            start += c
            continue
        if cur_rows + c > chunk_rows:
            flush()
        cur.append(j)
        cur_rows += c
    flush()
    return RowPlan(rows, flat[rows], seq, groups, s, chunk_rows)
