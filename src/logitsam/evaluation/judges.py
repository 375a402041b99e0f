"""Judges behind one interface: ``compare(prompts, a, b)`` -> P(a beats b) per prompt, in [0, 1].

- :class:`GoldRewardJudge`: any callable reward r(prompt, response) (e.g. VADER sentiment);
  a beats b when r(a) > r(b), ties count 1/2. Also ``score`` for mean-reward curves.
- :class:`RewardModelJudge`: a local HF sequence-classification reward model (scalar head).
- :class:`LLMJudge`: an OpenAI-compatible chat API (base URL, model, key from arguments or the
  environment: LOGITSAM_JUDGE_BASE_URL / _MODEL / _API_KEY, falling back to OPENAI_*), asked the
  DPO paper's pairwise question in both orders to cancel position bias, with retries and timeouts.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch


class Judge(Protocol):
    def compare(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[float]:
        """P(response a is better than response b) for each prompt."""
        ...


def _from_scores(ra: Sequence[float], rb: Sequence[float]) -> list[float]:
    return [1.0 if x > y else 0.0 if x < y else 0.5 for x, y in zip(ra, rb, strict=True)]


class GoldRewardJudge:
    """Pairwise judge from a pointwise gold reward ``reward(prompt, response) -> float``."""

    def __init__(self, reward: Callable[[str, str], float]) -> None:
        self.reward = reward

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return [float(self.reward(p, r)) for p, r in zip(prompts, responses, strict=True)]

    def compare(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[float]:
        return _from_scores(self.score(prompts, a), self.score(prompts, b))


def vader_reward() -> Callable[[str, str], float]:
    """VADER compound sentiment of the response, in [−1, 1] (offline lexicon)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return lambda prompt, response: analyzer.polarity_scores(response)["compound"]


class RewardModelJudge:
    """Scores prompt+response with a local ``AutoModelForSequenceClassification`` (first logit)."""

    def __init__(self, path: str, batch_size: int = 8, device: str | None = None) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.batch_size = batch_size

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        texts = [p + r for p, r in zip(prompts, responses, strict=True)]
        out: list[float] = []
        for s in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[s : s + self.batch_size], return_tensors="pt", padding=True, truncation=True)
            logits = self.model(**enc.to(self.device)).logits
            out.extend(logits[:, 0].float().cpu().tolist())
        return out

    def compare(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[float]:
        return _from_scores(self.score(prompts, a), self.score(prompts, b))


# The DPO paper's GPT-4 judging prompts (Appendix C.2), with {prompt}/{a}/{b} slots.
PAIRWISE_PROMPTS = {
    "summarization": (
        "Which of the following summaries does a better job of summarizing the most important points in the "
        "given forum post, without including unimportant or irrelevant details? A good summary is both precise "
        "and concise.\n\nPost:\n{prompt}\n\nSummary A:\n{a}\n\nSummary B:\n{b}\n\nFIRST provide a one-sentence "
        "comparison of the two summaries, explaining which you prefer and why. SECOND, on a new line, state only "
        '"A" or "B" to indicate your choice. Your response should use the format:\nComparison: <one-sentence '
        'comparison and explanation>\nPreferred: <"A" or "B">'
    ),
    "dialogue": (
        "For the following query to a chatbot, which response is more helpful?\n\nQuery: {prompt}\n\n"
        "Response A:\n{a}\n\nResponse B:\n{b}\n\nFIRST provide a one-sentence comparison of the two responses "
        'and explain which you feel is more helpful. SECOND, on a new line, state only "A" or "B" to indicate '
        "which response is more helpful. Your response should use the format:\nComparison: <one-sentence "
        'comparison and explanation>\nMore helpful: <"A" or "B">'
    ),
}


class JudgeError(RuntimeError):
    """The judge API failed after all retries."""


class LLMJudge:
    """Pairwise LLM judge over an OpenAI-compatible ``/chat/completions`` endpoint."""

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        *,
        task: str = "dialogue",
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 1.0,
        seed: int = 0,
    ) -> None:
        env = os.environ.get
        self.base_url = (base_url or env("LOGITSAM_JUDGE_BASE_URL") or env("OPENAI_BASE_URL") or "").rstrip("/")
        self.model = model or env("LOGITSAM_JUDGE_MODEL") or "gpt-4o-mini"
        self.api_key = api_key or env("LOGITSAM_JUDGE_API_KEY") or env("OPENAI_API_KEY") or ""
        if not self.base_url:
            raise ValueError("LLMJudge needs a base URL (argument or LOGITSAM_JUDGE_BASE_URL / OPENAI_BASE_URL)")
        if task not in PAIRWISE_PROMPTS:
            raise ValueError(f"unknown judge task {task!r}; choose from {', '.join(PAIRWISE_PROMPTS)}")
        self.template = PAIRWISE_PROMPTS[task]
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.rng = random.Random(seed)

    def _ask(self, content: str) -> str:
        body = json.dumps(
            {"model": self.model, "messages": [{"role": "user", "content": content}], "temperature": 0.0}
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(f"{self.base_url}/chat/completions", data=body, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read())["choices"][0]["message"]["content"]
            except (urllib.error.URLError, TimeoutError, KeyError, IndexError, json.JSONDecodeError) as e:
                last = e
                if isinstance(e, urllib.error.HTTPError) and e.code < 500 and e.code != 429:
                    break  # a client error will not go away by retrying
                if attempt < self.retries:
                    time.sleep(self.backoff * 2**attempt * (0.5 + self.rng.random()))
        raise JudgeError(f"judge at {self.base_url} failed after {self.retries + 1} tries: {last}")

    @staticmethod
    def parse(answer: str) -> str | None:
        """'A' or 'B' from the judge's last 'Preferred:' / 'More helpful:' line (None if absent)."""
        found = re.findall(r"(?:Preferred|More helpful)\s*:\s*\"?([AB])\b", answer)
        return found[-1] if found else None

    def _one(self, prompt: str, a: str, b: str) -> float | None:
        first = self.parse(self._ask(self.template.format(prompt=prompt, a=a, b=b)))
        second = self.parse(self._ask(self.template.format(prompt=prompt, a=b, b=a)))  # swapped order
        votes = [v for v in ((first == "A") if first else None, (second == "B") if second else None) if v is not None]
        return sum(votes) / len(votes) if votes else None

    def compare(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[float]:
        """Average of the two orders per prompt; an unparseable pair of answers counts as a tie."""
        out = []
        for p, x, y in zip(prompts, a, b, strict=True):
            v = self._one(p, x, y)
            out.append(0.5 if v is None else v)
        return out


def make_judge(kind: str, **kwargs: Any) -> Judge:
    """'vader' | 'reward_model' (path=...) | 'llm' (base_url=..., model=..., task=...)."""
    if kind == "vader":
        return GoldRewardJudge(vader_reward())
    if kind == "reward_model":
        return RewardModelJudge(**kwargs)
    if kind == "llm":
        return LLMJudge(**kwargs)
    raise ValueError(f"unknown judge {kind!r} (vader, reward_model, llm)")
