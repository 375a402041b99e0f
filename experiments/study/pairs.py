"""Controlled-sentiment preference pairs (as in the DPO paper's IMDb experiment).

Each prompt is the opening of a review; the model samples two continuations; the gold reward is
VADER's compound sentiment; the more positive continuation is chosen. Pairs are cached on disk,
keyed by the model, the prompts and the decoding settings.

The demo's own pairs (SmolLM2-135M-Instruct Q4_1, the packaged prompts, 32 new tokens at T = 1,
seed 0, VADER) ship with the package in ``data/demo_pairs.jsonl``, whose first line records how
they were made and their key: sampling them costs ~16 minutes on 2 CPU cores. ``resample=True``
generates them again and reports whether they reproduce the shipped file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from dataclasses import asdict
from importlib import resources
from typing import Any

from experiments.records import write_jsonl
from logitsam.evaluation.generation import DecodeSettings, generate

log = logging.getLogger(__name__)
SHIPPED = "data/demo_pairs.jsonl"


def load_prompts(path: str | None = None) -> list[str]:
    """Prompts from a text file (one per line, '#' comments); default: the packaged review openings."""
    source = resources.files("experiments.study").joinpath("data/review_prompts.txt") if path is None else path
    with open(source, encoding="utf-8") as f:
        text = f.read()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def split_prompts(prompts: list[str], n_eval: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, held-out) prompts: a seeded shuffle, the last ``n_eval`` held out."""
    order = list(prompts)
    random.Random(seed).shuffle(order)
    return order[: len(order) - n_eval], order[len(order) - n_eval :]


def pairs_key(model_id: str, prompts: list[str], settings: DecodeSettings, seed: int) -> str:
    """What a set of sampled pairs depends on, hashed."""
    return hashlib.sha256(json.dumps([model_id, prompts, asdict(settings), seed]).encode()).hexdigest()[:16]


def _shipped_file() -> Any:
    return resources.files("experiments.study").joinpath(SHIPPED)


def shipped_pairs(key: str, reward_name: str | None) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """(header, pairs) shipped with the package for ``key`` and this reward, or None."""
    path = _shipped_file()
    if reward_name is None or not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8").split("\n")
    header = json.loads(lines[0])
    if header.get("key") != key or header.get("reward") != reward_name:
        return None
    return header, [json.loads(line) for line in lines[1:] if line.strip()]


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
    reward_name: str | None = None,
    resample: bool = False,
) -> list[dict[str, Any]]:
    """Two sampled continuations per prompt, scored by ``reward(prompt, text)``; chosen = higher score.

    Pairs with equal scores are dropped (no preference). Cached under ``cache``; the shipped pairs
    are used when their key and ``reward_name`` match, unless ``resample`` (which then logs whether
    the new pairs equal the shipped ones).
    """
    key = pairs_key(model_id, prompts, settings, seed)
    path = os.path.join(cache, f"pairs-{key}.jsonl")
    shipped = shipped_pairs(key, reward_name)
    if not resample:
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                return [json.loads(line) for line in f]
        if shipped is not None:
            log.info("using the %d pairs shipped with logitsam (%s)", len(shipped[1]), shipped[0].get("made_with"))
            write_jsonl(shipped[1], path)
            return shipped[1]
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
    write_jsonl(pairs, path)
    if resample and shipped is not None:
        same = pairs == shipped[1]
        (log.info if same else log.warning)(
            "resampled pairs %s the shipped ones (%d vs %d pairs)",
            "reproduce" if same else "DIFFER from",
            len(pairs),
            len(shipped[1]),
        )
    return pairs
