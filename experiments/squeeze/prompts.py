"""Review prompts as openings × subjects, split *by subject*: held-out prompts are about new things.

``openings.txt`` holds templates with ``{s}``; ``subjects.txt`` the things reviewed. A seeded shuffle
of the subjects puts ``n_heldout_subjects`` of them aside; every opening × held-out subject is a
held-out prompt (win rates, held-out pairs), and training prompts use only the other subjects.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from importlib import resources


def _lines(name: str) -> list[str]:
    text = resources.files("experiments.squeeze").joinpath(f"data/{name}").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


@dataclass(frozen=True)
class PromptSplit:
    train_subjects: tuple[str, ...]
    heldout_subjects: tuple[str, ...]
    train: tuple[str, ...]  # every opening × training subject, in a seeded order
    heldout: tuple[str, ...]  # every opening × held-out subject, in a seeded order


def _fill(opening: str, subject: str) -> str:
    text = opening.replace("{s}", subject)
    return text[0].upper() + text[1:]  # "Honestly, the gym" stays; "{s} ..." at the start is capitalised


def prompt_split(n_heldout_subjects: int = 60, seed: int = 0) -> PromptSplit:
    """The fixed split of the packaged openings × subjects (same ``seed``, same split, on any machine)."""
    openings, subjects = _lines("openings.txt"), _lines("subjects.txt")
    if not 0 < n_heldout_subjects < len(subjects):
        raise ValueError(f"n_heldout_subjects must be in 1..{len(subjects) - 1}, got {n_heldout_subjects}")
    rng = random.Random(seed)
    order = list(subjects)
    rng.shuffle(order)
    held, train = order[:n_heldout_subjects], order[n_heldout_subjects:]
    train_prompts = [_fill(o, s) for s in train for o in openings]
    held_prompts = [_fill(o, s) for s in held for o in openings]
    rng.shuffle(train_prompts)
    rng.shuffle(held_prompts)
    return PromptSplit(tuple(train), tuple(held), tuple(train_prompts), tuple(held_prompts))
