"""Per-pair measurements of the responses during training (the Fig. 1c analogue, with intervals).

For a fixed set of tokenized pairs: the summed log-prob of each response, its token count, and the
mean over its tokens of the top-token probability and of the entropy of the next-token distribution.
Δ± per pair = log π_t(y±) − log π_0(y±), with π_0 the model before its first step (the reference).
A :class:`Probe` callback measures the training subset and the held-out pairs at fixed steps.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback

from logitsam.core.forward import body_forward, full_head, fusable
from logitsam.core.logprobs import IGNORE_INDEX, shift_for_causal_lm
from logitsam.data.batching import PreferenceCollator

STATS = ("logp", "tokens", "top", "entropy")  # per sequence: sum, count, mean, mean


@torch.no_grad()
def response_stats(model: Any, rows: list[dict[str, Any]], pad_id: int, batch_pairs: int = 8) -> dict[str, list]:
    """{stat: [[chosen, rejected] per row]} for ``rows`` (tokenized pairs), the model in eval mode."""
    collate = PreferenceCollator(pad_id)
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    out: dict[str, list] = {k: [] for k in STATS}
    try:
        for s in range(0, len(rows), batch_pairs):
            b = collate([{**r, "index": i} for i, r in enumerate(rows[s : s + batch_pairs])])
            ids, mask = b["input_ids"].to(device), b["attention_mask"].to(device)
            labels = shift_for_causal_lm(b["labels"]).to(device)
            scored = labels != IGNORE_INDEX
            fused = fusable(model)
            hidden, logits, _ = body_forward(model, ids, mask, fused=fused)
            if logits is None:  # logits of the response positions only (prompt and padding skipped)
                with full_head(model) as head:
                    z = torch.nn.functional.linear(hidden[scored], head.weight, head.bias)
            else:
                z = logits[scored]
            logp = torch.log_softmax(z if z.dtype == torch.float64 else z.float(), -1)
            per_row = scored.nonzero()[:, 0]  # the sequence of each scored position

            def per_seq(v: torch.Tensor, rows: torch.Tensor = per_row, n_seq: int = ids.shape[0]) -> torch.Tensor:
                return torch.zeros(n_seq, dtype=v.dtype, device=v.device).index_add_(0, rows, v)

            n = scored.sum(-1).clamp_min(1)
            cols = {
                "logp": per_seq(logp.gather(-1, labels[scored][:, None]).squeeze(-1)),
                "tokens": scored.sum(-1).float(),
                "top": per_seq(logp.max(-1).values.exp()) / n,
                "entropy": per_seq(-(logp.exp() * logp).sum(-1)) / n,
            }
            k = ids.shape[0] // 2
            for name, v in cols.items():
                v = v.double().cpu()
                out[name] += [[float(v[i]), float(v[k + i])] for i in range(k)]
    finally:
        model.train(was)
    return out


class Probe(TrainerCallback):
    """Measures ``sets`` ({name: rows}) at the end of each step in ``steps``; results in ``self.records``
    as {step: {set name: response_stats}}. Before the last step only the first ``mid`` rows of each set
    are measured (None: all), so the trajectory is cheap and the end point has every pair."""

    def __init__(self, sets: dict[str, list[dict[str, Any]]], pad_id: int, steps: set[int], mid: int | None = None):
        self.sets, self.pad_id, self.steps, self.mid = sets, pad_id, steps, mid
        self.records: dict[int, dict[str, Any]] = {}

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        step = state.global_step
        if step in self.steps and model is not None:
            n = None if step == max(self.steps) else self.mid
            self.records[step] = {k: response_stats(model, r[:n], self.pad_id) for k, r in self.sets.items()}
