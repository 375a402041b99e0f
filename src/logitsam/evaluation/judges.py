"""Judges behind one interface: ``compare(prompts, a, b)`` -> P(a beats b) per prompt, in [0, 1].

- :class:`ScoreJudge` (alias ``GoldRewardJudge``): any callable score r(prompt, response) (e.g. VADER
  sentiment: a sentiment judge, right for sentiment tasks, blind to helpfulness); a beats b when r(a) > r(b),
  ties count 1/2. Also ``score`` for mean-reward curves.
- :class:`RewardModelJudge`: a local HF sequence-classification reward model (one score: a scalar head or
  a named label; left-truncated so responses are never cut away, truncations counted in ``last``).
- :class:`LLMJudge`: an OpenAI-compatible chat API (base URL, model, key from arguments or the
  environment: LOGITSAM_JUDGE_BASE_URL / _MODEL / _API_KEY, falling back to OPENAI_*), asked the
  DPO paper's pairwise question in both orders to cancel position bias, with retries and timeouts.

LLM verdicts: the last ``More helpful:`` / ``Preferred:`` line must hold one letter and nothing else
(markdown bold, any case, quotes, "Response A" and end punctuation allowed); anything else ("C", an
echoed 'More helpful: "A" or "B"', "A/B", empty, null content) is a *failure*. A pair counts only when
both orders parse — one parsed and one failed order is a failed pair, not a win — and a failed pair's
outcome is NaN (never a tie). ``judge.last`` reports the failures; more than ``max_failure_rate`` of
the pairs failing makes ``compare`` raise :class:`JudgeError`.
"""

from __future__ import annotations

import http.client
import math
import os
import random
import re
import socket
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from logitsam.errors import UserError
from logitsam.evaluation.http import HTTPStatusError, RedirectRefused, post_json


class Judge(Protocol):
    def compare(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[float]:
        """P(response a is better than response b) for each prompt (NaN where the judge failed)."""
        ...


def _from_scores(ra: Sequence[float], rb: Sequence[float]) -> list[float]:
    return [1.0 if x > y else 0.0 if x < y else 0.5 for x, y in zip(ra, rb, strict=True)]


class ScoreJudge:
    """Pairwise judge from a pointwise score ``reward(prompt, response) -> float`` (it measures what the
    function measures: VADER's is sentiment). ``last_scores``: (scores of a, scores of b) of the last compare."""

    def __init__(self, reward: Callable[[str, str], float]) -> None:
        self.reward = reward
        self.last_scores: tuple[list[float], list[float]] | None = None

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return [float(self.reward(p, r)) for p, r in zip(prompts, responses, strict=True)]

    def compare(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[float]:
        self.last_scores = (self.score(prompts, a), self.score(prompts, b))
        return _from_scores(*self.last_scores)


GoldRewardJudge = ScoreJudge  # the old name (the studies' VADER is their task's defined reward)


def vader_reward() -> Callable[[str, str], float]:
    """VADER compound sentiment of the response, in [−1, 1] (offline lexicon)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return lambda prompt, response: analyzer.polarity_scores(response)["compound"]


def letters_reward(prompt: str, response: str) -> float:
    """Share of letters in a response: a reward random byte-level text can move (pipeline checks on the
    tiny random model, where sentiment means nothing)."""
    return sum(c.isalpha() for c in response) / max(1, len(response))


class RewardModelJudge:
    """Scores prompt+response with a local ``AutoModelForSequenceClassification`` reward model.

    The head must give one score: a single regression output (``num_labels == 1``), or the ``label`` to
    score of a classifier (its log-probability; a multi-label head's logit). A model whose head the
    checkpoint does not hold (a causal LM: the head would be freshly initialised) is refused. Texts
    longer than ``max_length`` tokens (default: the tokenizer's / the model's limit) lose the start of the
    prompt, never the response's end; ``last`` counts such comparisons (``truncated``) and those where a
    response alone did not fit (``responses_cut``).
    """

    def __init__(
        self,
        path: str,
        batch_size: int = 8,
        device: str | None = None,
        *,
        label: str | None = None,
        max_length: int | None = None,
    ) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.truncation_side = "left"  # keep the response: a judge of cut-away responses sees ties
        model, info = AutoModelForSequenceClassification.from_pretrained(path, output_loading_info=True)
        missing = sorted(info.get("missing_keys") or [])
        if missing:
            raise JudgeError(
                f"reward model {path}: the checkpoint lacks {', '.join(missing[:4])}"
                f"{' …' if len(missing) > 4 else ''}: its score head would be freshly initialised and judge at "
                "random (a causal LM, not a reward model?) — give a trained sequence-classification model"
            )
        self.model = model.eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.index, self.log_softmax = _score_label(path, self.model.config, label)
        limits = [self.tokenizer.model_max_length, getattr(self.model.config, "max_position_embeddings", None)]
        limits = [n for n in limits if isinstance(n, int) and 0 < n < 10**8]  # the tokenizer's "no limit" is ~1e30
        self.max_length = max_length or (min(limits) if limits else None)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.batch_size = batch_size
        self.last = JudgeReport()
        self.last_scores: tuple[list[float], list[float]] | None = None  # (a, b) of the last compare

    def _lengths(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(texts, verbose=False)["input_ids"]]

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        texts = [p + r for p, r in zip(prompts, responses, strict=True)]
        out: list[float] = []
        for s in range(0, len(texts), self.batch_size):
            kw = {"truncation": True, "max_length": self.max_length} if self.max_length else {}
            enc = self.tokenizer(texts[s : s + self.batch_size], return_tensors="pt", padding=True, **kw)
            logits = self.model(**enc.to(self.device)).logits.float()
            if self.log_softmax:
                logits = logits.log_softmax(-1)
            out.extend(logits[:, self.index].cpu().tolist())
        return out

    def compare(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[float]:
        """P(a beats b) per prompt (ties ½); ``last`` counts the comparisons that were truncated."""
        report = JudgeReport(pairs=len(prompts))
        if self.max_length:
            full = [self._lengths([p + x for p, x in zip(prompts, side, strict=True)]) for side in (a, b)]
            alone = [self._lengths(list(side)) for side in (a, b)]
            report.truncated = sum(max(n) > self.max_length for n in zip(*full, strict=True))
            report.responses_cut = sum(max(n) > self.max_length for n in zip(*alone, strict=True))
        self.last = report
        self.last_scores = (self.score(prompts, a), self.score(prompts, b))
        return _from_scores(*self.last_scores)


def _score_label(path: str, config: Any, label: str | None) -> tuple[int, bool]:
    """(output index, score by log-softmax) of the reward: the single output, or ``label`` of a classifier."""
    n = int(config.num_labels)
    names = {str(v): int(k) for k, v in (getattr(config, "id2label", None) or {}).items()}
    if label is None:
        if n != 1:
            raise JudgeError(
                f"reward model {path}: a {n}-label classifier ({', '.join(names) or n}), not one reward score; "
                "name the label to score: reward_model:PATH@LABEL"
            )
        return 0, False
    index = names.get(label, int(label) if label.isdigit() else -1)
    if not 0 <= index < n:
        raise JudgeError(f"reward model {path}: no label {label!r} (labels: {', '.join(names) or n})")
    # a softmax head's logits move together per input: only log-probabilities compare across texts
    return index, n > 1 and getattr(config, "problem_type", None) != "multi_label_classification"


def reward_model_spec(value: str) -> tuple[str, str | None]:
    """(path, label) of ``--judge reward_model:PATH[@LABEL]`` (a path that exists keeps any '@' it holds)."""
    path, at, label = value.rpartition("@")
    if not at or not label or not path or os.path.exists(value):
        return value, None
    return path, label


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


class JudgeError(UserError):
    """The judge API failed after all retries, or too many verdicts could not be parsed (the CLI prints
    it as one line: a wrong URL, a server that is down or a judge that answers nonsense is the user's to fix)."""


# The verdict line asked for: the label, then one letter and nothing else but wrappers and end punctuation
# ("More helpful: A", "**Preferred:** 'b'.", "more helpful - Response A"). An echo of the format line
# ('More helpful: "A" or "B"', "A/B") names both letters: a failure, never a vote for the first.
_LABEL = re.compile(r"(?:preferred|more\s+helpful)[\s*_`]*[:\-–]", re.IGNORECASE)
_ANSWER = re.compile(r"[\s*_`\"'(\[]*(?:(?:response|summary)\s+)?[\"'*_`(\[]*([ab])[\"'*_`)\]\s.!]*", re.IGNORECASE)


@dataclass
class JudgeReport:
    """Outcome of a judge's last ``compare``: how many pairs failed, which, examples; truncations."""

    pairs: int = 0
    failures: int = 0
    failed: list[int] = field(default_factory=list)  # indices of the failed pairs
    examples: list[str] = field(default_factory=list)  # a few unparsed answers, shortened
    truncated: int = 0  # reward model: comparisons whose text lost the start of the prompt
    responses_cut: int = 0  # ... and those where a response alone was longer than the model takes

    @property
    def failure_rate(self) -> float:
        return self.failures / self.pairs if self.pairs else 0.0


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
        max_failure_rate: float = 0.1,
    ) -> None:
        env = os.environ.get
        self.base_url = (base_url or env("LOGITSAM_JUDGE_BASE_URL") or env("OPENAI_BASE_URL") or "").rstrip("/")
        self.model = model or env("LOGITSAM_JUDGE_MODEL") or "gpt-4o-mini"
        self.api_key = api_key or env("LOGITSAM_JUDGE_API_KEY") or env("OPENAI_API_KEY") or ""
        if not self.base_url:
            raise ValueError("LLMJudge needs a base URL (argument or LOGITSAM_JUDGE_BASE_URL / OPENAI_BASE_URL)")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"LLMJudge base URL must start with http:// or https://, got {self.base_url!r}")
        if task not in PAIRWISE_PROMPTS:
            raise ValueError(f"unknown judge task {task!r}; choose from {', '.join(PAIRWISE_PROMPTS)}")
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"LLMJudge timeout must be a positive number of seconds, got {timeout!r}")
        if not (isinstance(retries, int) and retries >= 0):
            raise ValueError(f"LLMJudge retries must be an int >= 0, got {retries!r}")
        if not (isinstance(max_failure_rate, (int, float)) and 0.0 <= max_failure_rate <= 1.0):
            raise ValueError(f"LLMJudge max_failure_rate must be in [0, 1], got {max_failure_rate!r}")
        self.template = PAIRWISE_PROMPTS[task]
        self.timeout, self.retries, self.backoff = float(timeout), retries, backoff
        self.max_failure_rate = float(max_failure_rate)
        self.rng = random.Random(seed)
        self.last = JudgeReport()

    def check_reachable(self, timeout: float = 5.0) -> None:
        """Connect to the judge's host and port (no request): JudgeError naming the URL when nothing
        listens there, so a wrong URL fails before minutes of sampling rather than after."""
        parts = urllib.parse.urlsplit(self.base_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            with socket.create_connection((parts.hostname or "", port), timeout=timeout):
                pass
        except OSError as e:
            raise JudgeError(f"cannot reach the judge at {self.base_url}: {e.strerror or e}") from None

    def _ask(self, content: str) -> str | None:
        """The judge's answer text; None when the API keeps answering without text (null content)."""
        payload = {"model": self.model, "messages": [{"role": "user", "content": content}], "temperature": 0.0}
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        last: Exception | None = None
        no_text = False  # the last attempt got a well-formed answer whose content was not text
        for attempt in range(self.retries + 1):
            no_text = False
            try:
                answer = post_json(f"{self.base_url}/chat/completions", payload, headers, self.timeout)
                text = answer["choices"][0]["message"]["content"]
                if isinstance(text, str):
                    return text
                no_text, last = True, ValueError(f"message content is {type(text).__name__}, not text")
            except (HTTPStatusError, RedirectRefused) as e:
                last = e
                if not getattr(e, "retriable", False):
                    break  # a client error or a refused redirect will not go away by retrying
            except (OSError, http.client.HTTPException, ValueError, KeyError, IndexError, TypeError) as e:
                last = e  # network trouble, dropped connection, timeout, odd or non-UTF-8 body
            if attempt < self.retries:
                time.sleep(self.backoff * 2**attempt * (0.5 + self.rng.random()))
        if no_text:
            return None  # the service works but gives no verdict: a failed judgment, not an outage
        detail = f"{type(last).__name__}: {last}" if str(last) else type(last).__name__
        raise JudgeError(f"judge at {self.base_url} failed after {attempt + 1} tries: {detail}")

    @staticmethod
    def parse(answer: str | None) -> str | None:
        """'A' or 'B' from the judge's last 'Preferred:' / 'More helpful:' line, only when the rest of that
        line is the one letter (optionally quoted, bold, "Response X", end punctuation); else None.

        So "More helpful: a response that ..." and an echoed 'More helpful: "A" or "B"' are failures.
        """
        if not isinstance(answer, str):
            return None
        labels = list(_LABEL.finditer(answer))
        if not labels:
            return None
        m = _ANSWER.fullmatch(answer[labels[-1].end() :].split("\n", 1)[0])
        return m.group(1).upper() if m else None

    def _one(self, prompt: str, a: str, b: str) -> tuple[float | None, str]:
        """Mean vote of both orders, or (None, unparsed answer) when either order fails."""
        first = self._ask(self.template.format(prompt=prompt, a=a, b=b))
        v1 = self.parse(first)
        if v1 is None:
            return None, str(first)
        second = self._ask(self.template.format(prompt=prompt, a=b, b=a))  # swapped order
        v2 = self.parse(second)
        if v2 is None:
            return None, str(second)
        return ((v1 == "A") + (v2 == "B")) / 2, ""

    def compare(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[float]:
        """Average of the two orders per prompt; NaN for a failed pair (see the module docstring).

        Raises JudgeError when more than ``max_failure_rate`` of the pairs failed; ``self.last``
        holds the report either way.
        """
        out, report = [], JudgeReport()
        for i, (p, x, y) in enumerate(zip(prompts, a, b, strict=True)):
            v, raw = self._one(p, x, y)
            report.pairs += 1
            if v is None:
                report.failures += 1
                report.failed.append(i)
                if len(report.examples) < 3:
                    report.examples.append(raw[:120])
            out.append(math.nan if v is None else v)
        self.last = report
        if report.failure_rate > self.max_failure_rate:
            raise JudgeError(
                f"judge verdicts could not be parsed for {report.failures} of {report.pairs} pairs "
                f"({report.failure_rate:.0%} > max_failure_rate {self.max_failure_rate:.0%}); "
                f"e.g. {report.examples[0]!r}"
            )
        return out
