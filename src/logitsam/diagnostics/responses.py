"""Per-pair measurements of responses under a model: log-probs, top-token mass, entropy, and where two
responses of a pair differ (the squeeze and displacement experiments' probes, ``logitsam displacement``).

For tokenized pairs: the summed log-prob of each response, its token count, the mean over its tokens of
the top-token probability and of the entropy of the next-token distribution, and the summed log-prob of
three regions (shared prefix, differing tokens, shared suffix: where a fall sits on minimal-edit pairs).
"""

from __future__ import annotations

from typing import Any

import torch

from logitsam.core.forward import body_forward, full_head, fusable
from logitsam.core.logprobs import IGNORE_INDEX, shift_for_causal_lm
from logitsam.data.batching import PreferenceCollator

STATS = ("logp", "tokens", "top", "entropy")  # per sequence: sum, count, mean, mean
# per sequence, the summed log-prob of three regions of the response, split where chosen and rejected differ:
# the tokens both share at the start, the differing tokens, and the tokens both share at the end
REGIONS = ("logp_prefix", "logp_differ", "logp_suffix")


def split_regions(a: list[int], b: list[int]) -> tuple[int, int, int, int]:
    """(shared prefix length, shared suffix length, len a, len b) of two token lists; prefix first, then the
    longest common suffix of what is left (so the regions of each side add up to its length)."""
    p = 0
    while p < min(len(a), len(b)) and a[p] == b[p]:
        p += 1
    q = 0
    while q < min(len(a), len(b)) - p and a[-1 - q] == b[-1 - q]:
        q += 1
    return p, q, len(a), len(b)


def _region_sums(lp: list[float], p: int, q: int) -> list[float]:
    n = len(lp)
    return [sum(lp[:p]), sum(lp[p : n - q]), sum(lp[n - q :])]


@torch.no_grad()
def response_stats(model: Any, rows: list[dict[str, Any]], pad_id: int, batch_pairs: int = 8) -> dict[str, list]:
    """{stat: [[chosen, rejected] per row]} for ``rows`` (tokenized pairs), the model in eval mode."""
    collate = PreferenceCollator(pad_id)
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    out: dict[str, list] = {k: [] for k in STATS + REGIONS}
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
            tok_lp = logp.gather(-1, labels[scored][:, None]).squeeze(-1).double().cpu().tolist()
            toks, rows_of = labels[scored].cpu().tolist(), per_row.cpu().tolist()
            seq_lp: list[list[float]] = [[] for _ in range(ids.shape[0])]
            seq_tok: list[list[int]] = [[] for _ in range(ids.shape[0])]
            for r, t, v in zip(rows_of, toks, tok_lp, strict=True):
                seq_lp[r].append(v)
                seq_tok[r].append(t)
            for i in range(k):
                p, q, _, _ = split_regions(seq_tok[i], seq_tok[k + i])
                a, b = _region_sums(seq_lp[i], p, q), _region_sums(seq_lp[k + i], p, q)
                for j, name in enumerate(REGIONS):
                    out[name].append([a[j], b[j]])
    finally:
        model.train(was)
    return out
