"""Controlled-sentiment preference pairs (as in the DPO paper's IMDb experiment).

Each prompt is the opening of a review; the model samples two continuations; the gold reward is
VADER's compound sentiment; the more positive continuation is chosen. Pairs are cached on disk,
keyed by the model, the prompts and the decoding settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict
from importlib import resources
from typing import Any

from ..evaluation.generation import DecodeSettings, generate


def load_prompts(path: str | None = None) -> list[str]:
    """Prompts from a text file (one per line, '#' comments); default: the packaged review openings."""
    source = resources.files("logitsam.study").joinpath("data/review_prompts.txt") if path is None else path
    with open(source, encoding="utf-8") as f:
        text = f.read()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def split_prompts(prompts: list[str], n_eval: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, held-out) prompts: a seeded shuffle, the last ``n_eval`` held out."""
    order = list(prompts)
    random.Random(seed).shuffle(order)
    return order[: len(order) - n_eval], order[len(order) - n_eval :]


def make_pairs(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    reward: Any,
    settings: DecodeSettings,
    *,
    model_id: str,
    cache: str,
    seed: int = 0,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Two sampled continuations per prompt, scored by ``reward(prompt, text)``; chosen = higher score.

    Pairs with equal scores are dropped (no preference). Cached under ``cache``.
    """
    key = hashlib.sha256(json.dumps([model_id, prompts, asdict(settings), seed]).encode()).hexdigest()[:16]
    path = os.path.join(cache, f"pairs-{key}.jsonl")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f]
    doubled = [p for p in prompts for _ in range(2)]
    texts = generate(model, tokenizer, doubled, settings, batch_size=batch_size, seed=seed, desc="sampling pairs")
    pairs = []
    for i, prompt in enumerate(prompts):
        a, b = texts[2 * i], texts[2 * i + 1]
        ra, rb = reward(prompt, a), reward(prompt, b)
        if ra == rb or a.strip() == b.strip():
            continue
        (c, rc), (r, rr) = ((a, ra), (b, rb)) if ra > rb else ((b, rb), (a, ra))
        pairs.append({"prompt": prompt, "chosen": c, "rejected": r, "score_chosen": rc, "score_rejected": rr})
    os.makedirs(cache, exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps(p) + "\n")
    os.replace(path + ".tmp", path)
    return pairs


def write_jsonl(rows: list[dict[str, Any]], path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path
