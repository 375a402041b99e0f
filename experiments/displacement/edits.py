"""Minimal edits that carry a task preference: one sentiment word swapped for its opposite.

Pal et al. (2024, "Smaug"/DPO-Positive) show that DPO can lower the chosen response's likelihood
when chosen and rejected differ in a few tokens; Razin et al. (2024) tie the fall to how similar the
two responses' hidden embeddings are. A swap of one sentiment word gives such pairs with a real
preference: the judge (VADER) scores the positive version higher, so a policy that learns the pairs
learns the task. ``swap_one`` finds a word of :data:`OPPOSITES` in a text and replaces it (case kept).
"""

from __future__ import annotations

import random
import re

# positive → negative; used both ways. Words whose sense flips with context ("like", "fine") are left out.
_PAIRS = (
    ("good", "bad"),
    ("great", "terrible"),
    ("best", "worst"),
    ("better", "worse"),
    ("love", "hate"),
    ("loved", "hated"),
    ("loves", "hates"),
    ("amazing", "awful"),
    ("excellent", "horrible"),
    ("wonderful", "dreadful"),
    ("happy", "sad"),
    ("nice", "nasty"),
    ("beautiful", "ugly"),
    ("friendly", "rude"),
    ("delicious", "disgusting"),
    ("fresh", "stale"),
    ("clean", "dirty"),
    ("fun", "boring"),
    ("enjoy", "dislike"),
    ("enjoyed", "disliked"),
    ("pleasant", "unpleasant"),
    ("comfortable", "uncomfortable"),
    ("helpful", "unhelpful"),
    ("impressive", "disappointing"),
    ("incredible", "horrendous"),
    ("fantastic", "abysmal"),
    ("awesome", "lousy"),
    ("perfect", "flawed"),
    ("lovely", "hideous"),
    ("safe", "unsafe"),
    ("success", "failure"),
    ("successful", "unsuccessful"),
    ("positive", "negative"),
    ("pleased", "disappointed"),
    ("glad", "upset"),
    ("kind", "cruel"),
    ("fair", "unfair"),
    ("gentle", "harsh"),
    ("strong", "weak"),
    ("easy", "difficult"),
    ("win", "lose"),
    ("smile", "frown"),
    ("laugh", "cry"),
    ("hope", "fear"),
    ("calm", "chaotic"),
    ("charming", "annoying"),
    ("generous", "stingy"),
    ("popular", "unpopular"),
    ("recommend", "discourage"),
    ("favorite", "least"),
    ("cheerful", "gloomy"),
    ("brilliant", "stupid"),
    ("superb", "pathetic"),
    ("relaxing", "stressful"),
)
OPPOSITES: dict[str, str] = {**{a: b for a, b in _PAIRS}, **{b: a for a, b in _PAIRS}}
_WORD = re.compile(r"[A-Za-z]+")


def _cased(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    return word[0].upper() + word[1:] if like[0].isupper() else word


def swappable(text: str, min_words_before: int = 2) -> list[re.Match[str]]:
    """Words of ``text`` that :data:`OPPOSITES` can flip, with at least ``min_words_before`` words before them
    and one after (so the edit has a shared prefix and a shared suffix around it)."""
    words = list(_WORD.finditer(text))
    return [m for i, m in enumerate(words[:-1]) if i >= min_words_before and m.group().lower() in OPPOSITES]


def swap_one(text: str, rng: random.Random) -> tuple[str, dict[str, object]] | None:
    """``text`` with one swappable word (chosen by ``rng``) replaced by its opposite, and what was done
    ({"word", "replacement", "char"}); None when the text has no such word."""
    found = swappable(text)
    if not found:
        return None
    m = rng.choice(found)
    new = _cased(OPPOSITES[m.group().lower()], m.group())
    return text[: m.start()] + new + text[m.end() :], {"word": m.group(), "replacement": new, "char": m.start()}
