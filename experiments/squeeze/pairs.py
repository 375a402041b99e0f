"""Preference pairs of three kinds, all scored by the same gold reward (chosen = higher score).

- ``onpolicy``: two continuations of the prompt sampled from the policy itself (the demo's pairs).
- ``offpolicy``: one continuation sampled under an enthusiastic and one under a scathing steering
  preamble, then paired with the *plain* prompt: both responses are unlikely under the policy, as
  human-written HH / WebGPT responses are (the regime of the paper's Fig. 1c).
- ``similar``: off-policy pairs that share their first ``SHARED_TOKENS`` tokens (an on-policy
  prefix), then diverge under the two preambles: chosen and rejected are alike, where likelihood
  displacement is strongest.
Pairs with equal scores or identical texts are dropped. Cached on disk by everything they depend on.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

from experiments.records import write_jsonl
from logitsam.evaluation.generation import DecodeSettings, generate

KINDS = ("onpolicy", "offpolicy", "similar")
STEER_POS = "This is a glowing, enthusiastic five-star review. I loved everything about it.\n\n"
STEER_NEG = "This is a scathing, angry one-star review. I hated everything about it.\n\n"
SHARED_TOKENS = 8


def pairs_key(kind: str, model_id: str, prompts: list[str], new_tokens: int, seed: int) -> str:
    spec = [kind, model_id, prompts, new_tokens, seed, STEER_POS, STEER_NEG, SHARED_TOKENS]
    return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:16]


def _sample(model: Any, tok: Any, prompts: list[str], tokens: int, seed: int, desc: str) -> list[str]:
    dec = DecodeSettings(max_new_tokens=tokens, temperature=1.0)
    return generate(model, tok, prompts, dec, batch_size=32, seed=seed, desc=desc)  # type: ignore[return-value]


def _two_responses(model: Any, tok: Any, kind: str, prompts: list[str], tokens: int, seed: int) -> tuple[list, list]:
    if kind == "onpolicy":
        doubled = _sample(model, tok, [p for p in prompts for _ in range(2)], tokens, seed, "on-policy pairs")
        return doubled[0::2], doubled[1::2]
    prefix = [""] * len(prompts)
    if kind == "similar":
        prefix = _sample(model, tok, prompts, SHARED_TOKENS, seed + 2, "shared prefixes")
        tokens -= SHARED_TOKENS
    pos = _sample(model, tok, [STEER_POS + p + x for p, x in zip(prompts, prefix, strict=True)], tokens, seed, "pos")
    neg = _sample(
        model, tok, [STEER_NEG + p + x for p, x in zip(prompts, prefix, strict=True)], tokens, seed + 1, "neg"
    )
    return [x + a for x, a in zip(prefix, pos, strict=True)], [x + b for x, b in zip(prefix, neg, strict=True)]


def make_pairs(
    model: Any,
    tok: Any,
    kind: str,
    prompts: list[str],
    reward: Callable[[str, str], float],
    *,
    model_id: str,
    new_tokens: int,
    cache: str,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Pairs of ``kind`` for ``prompts`` (those with a preference: ties and identical texts dropped)."""
    if kind not in KINDS:
        raise ValueError(f"pair kind must be one of {', '.join(KINDS)}, got {kind!r}")
    path = os.path.join(cache, f"pairs-{kind}-{pairs_key(kind, model_id, prompts, new_tokens, seed)}.jsonl")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f]
    a, b = _two_responses(model, tok, kind, prompts, new_tokens, seed)
    pairs = []
    for prompt, x, y in zip(prompts, a, b, strict=True):
        rx, ry = reward(prompt, x), reward(prompt, y)
        if rx == ry or x.strip() == y.strip():
            continue
        (c, rc), (r, rr) = ((x, rx), (y, ry)) if rx > ry else ((y, ry), (x, rx))
        pairs.append({"prompt": prompt, "chosen": c, "rejected": r, "score_chosen": rc, "score_rejected": rr})
    write_jsonl(pairs, path)
    return pairs
