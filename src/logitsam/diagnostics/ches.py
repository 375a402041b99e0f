"""Centered hidden-embedding similarity (CHES; Razin et al. 2024, "Unintentional Unalignment"): which
preference pairs make DPO lower the chosen response's likelihood.

For a pair (x, y+, y−), with h(x, y<k) the model's last hidden state (what the output head reads) at the
position that predicts the k-th response token:
    CHES = ⟨Σ_k h(x, y+<k), Σ_k h(x, y−<k)⟩ − ‖Σ_k h(x, y+<k)‖²
and the length-normalised form with each sum divided by its response's length. A large CHES means the
rejected response's hidden embeddings point along the chosen one's: the gradient that pushes y− down
pushes y+ down too. Razin et al. show it ranks pairs by how much their chosen likelihood falls and use it
to filter a dataset before training.
"""

from __future__ import annotations

from typing import Any

import torch

from logitsam.core.forward import body_forward
from logitsam.core.logprobs import IGNORE_INDEX, shift_for_causal_lm
from logitsam.data.batching import PreferenceCollator


@torch.no_grad()
def ches_scores(model: Any, rows: list[dict[str, Any]], pad_id: int, batch_pairs: int = 8) -> dict[str, list[float]]:
    """{"ches": [...], "ches_normalized": [...]} per tokenized pair (``prompt_ids``, ``chosen_ids``,
    ``rejected_ids``), in float64, the model in eval mode."""
    collate = PreferenceCollator(pad_id)
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    out: dict[str, list[float]] = {"ches": [], "ches_normalized": []}
    try:
        for s in range(0, len(rows), batch_pairs):
            b = collate([{**r, "index": i} for i, r in enumerate(rows[s : s + batch_pairs])])
            ids, mask = b["input_ids"].to(device), b["attention_mask"].to(device)
            scored = (shift_for_causal_lm(b["labels"]) != IGNORE_INDEX).to(device)
            hidden, _, _ = body_forward(model, ids, mask, fused=True)
            h = (hidden.double() * scored[..., None]).sum(1)  # (2B, d): summed over response positions
            n = scored.sum(-1, keepdim=True).clamp_min(1).double()
            k = ids.shape[0] // 2
            for hs, key in ((h, "ches"), (h / n, "ches_normalized")):
                c, r = hs[:k], hs[k:]
                out[key] += ((c * r).sum(-1) - (c * c).sum(-1)).tolist()
    finally:
        model.train(was)
    return out
