"""Swap pairs: chosen and rejected differ in one sentiment word; each pair carries two control texts.

For each prompt the starting model samples one continuation (the base); when it has a swappable word
(edits.py), the base and its swapped copy form a pair. The first pairs' prompts get two more samples:
*control text*, the model's own samples of the same prompt, in no pair, whose drift during training is
the policy's general movement. The base and its swapped
copy are ordered by the judge (chosen = the higher score; ties dropped), so half the pairs keep the
model's own sample as chosen and half as rejected, depending on the base word's sign.
Cached on disk by everything they depend on, like the squeeze pairs.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable
from typing import Any

from experiments.displacement.edits import OPPOSITES, swap_one
from experiments.records import write_jsonl
from logitsam.evaluation.generation import DecodeSettings, generate

CHUNK = 64  # prompts sampled at a time: sampling stops once enough pairs are found


def _key(model_id: str, prompts: list[str], new_tokens: int, seed: int, n_pairs: int, n_controls: int) -> str:
    spec = ["swap", model_id, prompts, new_tokens, seed, sorted(OPPOSITES.items()), n_pairs, n_controls, CHUNK]
    return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:16]


def swap_pairs(
    model: Any,
    tok: Any,
    prompts: list[str],
    reward: Callable[[str, str], float],
    *,
    model_id: str,
    new_tokens: int,
    cache: str,
    n_pairs: int,
    n_controls: int = 0,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """``n_pairs`` pairs {prompt, chosen, rejected, score_chosen, score_rejected, edited, edit, controls}
    from the first prompts whose sample allows a swap that changes the judge's score; the first
    ``n_controls`` pairs carry two control texts, the others none. Raises ValueError when the prompts
    run out first (the message says how many pairs they gave)."""
    path = os.path.join(cache, f"pairs-swap-{_key(model_id, prompts, new_tokens, seed, n_pairs, n_controls)}.jsonl")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f]
    dec = DecodeSettings(max_new_tokens=new_tokens, temperature=1.0)
    rng = random.Random(seed)
    pairs: list[dict[str, Any]] = []
    for c in range(0, len(prompts), CHUNK):
        chunk = prompts[c : c + CHUNK]
        texts = generate(model, tok, chunk, dec, batch_size=32, seed=seed + c, desc="swap-pair samples")
        for prompt, base in zip(chunk, texts, strict=True):
            done = swap_one(base, rng)
            if done is None or len(pairs) == n_pairs:
                continue
            edited, edit = done
            rb, re_ = reward(prompt, base), reward(prompt, edited)
            if rb == re_:
                continue
            base_wins = rb > re_
            pairs.append(
                {
                    "prompt": prompt,
                    "chosen": base if base_wins else edited,
                    "rejected": edited if base_wins else base,
                    "score_chosen": max(rb, re_),
                    "score_rejected": min(rb, re_),
                    "edited": "rejected" if base_wins else "chosen",
                    "edit": edit,
                    "controls": [],
                }
            )
        if len(pairs) == n_pairs:
            break
    if len(pairs) < n_pairs:
        raise ValueError(f"{len(prompts)} prompts gave {len(pairs)} swap pairs; {n_pairs} needed")
    # control text: two more samples of each of the first n_controls pairs' prompts (another sampling seed)
    ctl_prompts = [p["prompt"] for p in pairs[:n_controls] for _ in range(2)]
    if ctl_prompts:
        ctl = generate(model, tok, ctl_prompts, dec, batch_size=32, seed=seed + 10**6, desc="control samples")
        for i, p in enumerate(pairs[:n_controls]):
            p["controls"] = list(ctl[2 * i : 2 * i + 2])
    write_jsonl(pairs, path)
    return pairs


def training_rows(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pairs as a trainer reads them (prompt, chosen, rejected, scores)."""
    keep = ("prompt", "chosen", "rejected", "score_chosen", "score_rejected")
    return [{k: p[k] for k in keep} for p in pairs]


def control_rows(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The control texts as probe rows (both sides are control text: their mean drift is the control)."""
    return [{"prompt": p["prompt"], "chosen": p["controls"][0], "rejected": p["controls"][1]} for p in pairs]
