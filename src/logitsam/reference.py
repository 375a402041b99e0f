"""Reference log-probs computed once and cached on disk, so the reference model leaves memory.

The cache key hashes the reference model's identity and every tokenized row, so a changed model,
tokenizer, data file or length limit can never reuse stale values.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any

import torch
from tqdm.auto import tqdm

from .batching import PreferenceCollator
from .models import cache_dir
from .objective import model_sequence_logps

log = logging.getLogger(__name__)


def cache_key(model_id: str, rows: list[dict[str, Any]]) -> str:
    h = hashlib.sha256(model_id.encode())
    for r in rows:
        h.update(json.dumps([r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]]).encode())
    return h.hexdigest()[:24]


@torch.no_grad()
def compute_reference_logps(
    model: Any,
    rows: list[dict[str, Any]],
    pad_token_id: int,
    batch_size: int = 8,
    device: str | None = None,
    autocast: torch.dtype | None = None,
) -> torch.Tensor:
    """(len(rows), 2) summed reference log-probs of (chosen, rejected) for every row.

    autocast: the mixed-precision dtype training will run under (e.g. bf16), so the cached values
    equal what a live reference would give inside the training step.
    """
    collate = PreferenceCollator(pad_token_id)
    device = device or next(model.parameters()).device
    dev_type = torch.device(device).type
    model.eval()
    out = []
    for s in tqdm(range(0, len(rows), batch_size), desc="reference log-probs", leave=False):
        batch = collate(rows[s : s + batch_size])
        ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
        with torch.autocast(dev_type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            sums = model_sequence_logps(model, ids, mask, labels).float().cpu()
        n = len(sums) // 2
        out.append(torch.stack([sums[:n], sums[n:]], dim=1))
    return torch.cat(out) if out else torch.zeros(0, 2)


def attach_reference_logps(
    model: Any, model_id: str, rows: list[dict[str, Any]], pad_token_id: int, batch_size: int = 8
) -> str:
    """Add ``ref_logps`` (chosen, rejected) to each row, from the disk cache or computed now; returns the path."""
    path = os.path.join(cache_dir(), "ref_logps", f"{cache_key(model_id, rows)}.pt")
    if os.path.exists(path):
        values = torch.load(path)
        log.info("reference log-probs from cache %s", path)
    else:
        values = compute_reference_logps(model, rows, pad_token_id, batch_size)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save(values, path + ".tmp")
        os.replace(path + ".tmp", path)
    for r, v in zip(rows, values.tolist(), strict=True):
        r["ref_logps"] = v
    return path
