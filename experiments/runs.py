"""What every study does with one run, once: train it, then sample held-out prompts with the trained
model, judge the samples, measure the KL to the starting model, and read the training log back.

The studies (study/, squeeze/, displacement/) differ in what they train and probe, not in this: both
``Study.run`` and ``Experiment.run`` call :func:`train_and_measure`, and the record is written by
``records.write_record`` (atomically, with its checksum).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from logitsam.evaluation.generation import DecodeSettings, generate
from logitsam.evaluation.winrate import sequence_kl_values
from logitsam.training.run import train


@dataclass(frozen=True)
class Evaluation:
    """How the trained model is measured: prompts, decoding, the judge, the baseline samples (the
    starting model's, same prompts and sampling seed) and the reference model the KL is taken to."""

    prompts: Sequence[str]
    decode: DecodeSettings
    judge: Any  # score(prompts, samples) -> list[float]; compare(prompts, a, b) -> list[float]
    baseline_samples: Sequence[str]
    reference: Any
    tokenizer: Any
    gen_batch: int = 32
    seed: int = 1234  # one sampling seed for every model: common random numbers for paired comparisons


def sample_and_judge(model: Any, ev: Evaluation, name: str) -> dict[str, Any]:
    """``samples``, ``rewards``, ``outcomes_vs_sft`` (win probability against the baseline per prompt) and
    ``kl_values`` (per-prompt sequence KL(π‖π_ref) of the samples) of ``model`` on ``ev.prompts``."""
    samples, ids = generate(
        model, ev.tokenizer, list(ev.prompts), ev.decode, batch_size=ev.gen_batch, seed=ev.seed,
        desc=f"{name}: held-out samples", return_ids=True,
    )  # fmt: skip
    return {
        "samples": samples,
        "rewards": ev.judge.score(ev.prompts, samples),
        "outcomes_vs_sft": ev.judge.compare(ev.prompts, samples, ev.baseline_samples),
        "kl_values": sequence_kl_values(model, ev.reference, ids, ev.tokenizer.pad_token_id, batch_size=32),
    }


def train_and_measure(
    cfg: Any,
    ev: Evaluation,
    name: str,
    *,
    callbacks: Sequence[Any] = (),
    extra: Callable[[Any, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` (a logitsam Config), then measure the trained model by ``ev`` (and ``extra(model, out)``,
    which may add keys). Returns the record's measured part: samples, rewards, outcomes_vs_sft,
    kl_values, log (metrics.jsonl), final_metrics (numbers only) and seconds."""
    out: dict[str, Any] = {}

    def on_end(trainer: Any) -> None:
        model = trainer.accelerator.unwrap_model(trainer.model)
        out.update(sample_and_judge(model, ev, name))
        if extra is not None:
            extra(model, out)

    t0 = time.time()
    res = train(cfg, on_end=on_end, callbacks=list(callbacks))
    with open(os.path.join(cfg.train.output_dir, "metrics.jsonl"), encoding="utf-8") as f:
        out["log"] = [json.loads(line) for line in f]
    out["final_metrics"] = {k: v for k, v in res["metrics"].items() if isinstance(v, (int, float))}
    out["seconds"] = time.time() - t0
    return out
