"""Supervised fine-tuning (``logitsam sft``): the step before preference training, with the same config,
data formats, run directory, resuming, LoRA and distributed launch as ``logitsam train``.

Data: rows with ``prompt`` and ``completion`` (or ``response``) strings, or any preference data set
logitsam trains on, whose *chosen* responses are the targets (the paper's SFT stage on HH / TL;DR /
UltraChat). Tokenized exactly as preference training tokenizes a response (data/batching.py: BOS,
chat template, EOS, truncation), so the SFT model learns the token layout DPO then scores. The loss
is the model's own token-mean cross-entropy on response tokens (prompt and padding masked), from
``transformers.Trainer``; the ``loss`` and ``sam`` sections of the config are not used.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from transformers import Trainer

from logitsam.config.schema import Config
from logitsam.core.logprobs import IGNORE_INDEX
from logitsam.data.batching import DropCounts, check_pad_id, tokenize_example
from logitsam.data.examples import PreferenceExample, check_messages, load_examples
from logitsam.data.files import read_rows
from logitsam.errors import DataError
from logitsam.training.commit import AtomicCheckpoints
from logitsam.training.continuity import ContinuedRun
from logitsam.training.logs import JsonlMetrics, install_console
from logitsam.training.recipe import Data, Recipe, check_eval_rows, check_train_rows, run_recipe, split_eval
from logitsam.training.trainer import StopOnDivergence

log = logging.getLogger(__name__)
RESPONSE_KEYS = ("completion", "response")


class SftTrainer(StopOnDivergence, ContinuedRun, Trainer):
    """transformers.Trainer whose logged intervals and summary ``train_loss`` are an uninterrupted run's,
    also after a resume."""


def load_sft_examples(paths: list[str], fmt: str = "auto") -> list[PreferenceExample]:
    """Examples whose ``chosen`` is the SFT target: prompt/completion rows, conversational ``messages`` rows
    (the last, assistant, message is the target), or any preference format."""
    out: list[PreferenceExample] = []
    for path in paths:
        rows = list(read_rows(path))
        first = rows[0][1] if rows else None
        if isinstance(first, dict) and "messages" in first and "chosen" not in first:
            out += [_from_messages(row, path, line) for line, row in rows]
        elif isinstance(first, dict) and "prompt" in first and any(k in first for k in RESPONSE_KEYS):
            for line, row in rows:
                key = next((k for k in RESPONSE_KEYS if k in row), RESPONSE_KEYS[0])
                if all(isinstance(row.get(k), str) for k in RESPONSE_KEYS) and row["completion"] != row["response"]:
                    raise DataError(path, line, "response", "differs from 'completion' in this row: keep one target")
                for name in ("prompt", key):
                    if not isinstance(row.get(name), str):
                        raise DataError(path, line, name, f"expected a string, got {type(row.get(name)).__name__}")
                if not row[key].strip():
                    raise DataError(path, line, key, "empty: nothing to learn")
                out.append(PreferenceExample(row["prompt"], row[key], "", source=f"{path}:{line}"))
        else:
            out += load_examples([path], fmt)
    return out


def _from_messages(row: Any, path: str, line: int) -> PreferenceExample:
    """A conversational SFT row (TRL's ``{"messages": [...]}``): the last message, an assistant turn, is
    the target; the turns before it are the prompt (rendered by the chat template)."""
    if not isinstance(row, dict):
        raise DataError(path, line, None, f"expected an object, got {type(row).__name__}")
    messages = check_messages(row.get("messages"), "messages", path, line)
    if messages[-1]["role"] != "assistant" or len(messages) < 2:
        raise DataError(path, line, f"messages[{len(messages) - 1}].role",
                        "the last message must be the assistant's answer after at least one turn")  # fmt: skip
    if not messages[-1]["content"].strip():
        raise DataError(path, line, f"messages[{len(messages) - 1}].content", "empty: nothing to learn")
    return PreferenceExample(messages[:-1], messages[-1], "", source=f"{path}:{line}")


def tokenize_sft(tokenizer: Any, examples: Sequence[PreferenceExample], max_length: int, max_prompt_length: int):
    """[{prompt_ids, response_ids}] of the examples' prompt and chosen response; dropped rows counted."""
    rows, drops = [], DropCounts()
    for ex in examples:
        empty: Any = {"role": "assistant", "content": ""} if ex.is_chat else ""
        res = tokenize_example(tokenizer, replace(ex, rejected=empty), max_length, max_prompt_length)
        if isinstance(res, str):  # a prompt too long (an empty response was refused when read)
            drops.prompt_too_long += 1
            continue
        rows.append({"prompt_ids": res["prompt_ids"], "response_ids": res["chosen_ids"]})
    if drops.total:
        log.warning("dropped %d of %d rows: prompt longer than the limit", drops.total, len(examples))
    return rows, drops


class SFTCollator:
    """Right-padded prompt+response batches; ``labels`` hold the response tokens only (unshifted: the model
    shifts them)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad = check_pad_id(pad_token_id)

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["prompt_ids"]) + len(r["response_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            p, y = r["prompt_ids"], r["response_ids"]
            ids[i, : len(p) + len(y)] = torch.tensor(p + y)
            labels[i, len(p) : len(p) + len(y)] = torch.tensor(y)
            mask[i, : len(p) + len(y)] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class SftRecipe(Recipe):
    """``logitsam sft``: the chosen responses as targets, the model's own cross-entropy, no reference."""

    kind = "sft"

    def check(self, cfg: Config) -> None:
        if cfg.sam.rho:
            log.warning("logitsam sft does not use sam.rho = %g (logits-SAM is for preference training)", cfg.sam.rho)

    def setup_data(self, cfg: Config, tokenizer: Any) -> Data:
        d = cfg.data
        train_ex = load_sft_examples(d.train_files, d.format)
        eval_ex = load_sft_examples(d.eval_files, d.format) if d.eval_files else []
        train_ex, eval_ex = split_eval(train_ex, eval_ex, d.eval_fraction, d.seed)
        train_rows, drops = tokenize_sft(tokenizer, train_ex, d.max_length, d.max_prompt_length)
        eval_rows, _ = tokenize_sft(tokenizer, eval_ex, d.max_length, d.max_prompt_length)
        check_train_rows(train_rows, drops.total)
        check_eval_rows(cfg, len(eval_ex), len(eval_rows))
        return Data(train_rows, eval_rows, drops.total)

    def setup_trainer(
        self, cfg: Config, model: Any, args: Any, tokenizer: Any, data: Data, reference: Any, callbacks: list[Any]
    ) -> Any:
        trainer = SftTrainer(
            model=model,
            args=args,
            train_dataset=data.train_rows,
            eval_dataset=data.eval_rows or None,
            data_collator=SFTCollator(tokenizer.pad_token_id),
            processing_class=tokenizer,
            callbacks=[AtomicCheckpoints(), JsonlMetrics(), *callbacks],
        )
        install_console(trainer, show=cfg.train.print_logs)
        return trainer


def sft(cfg: Config, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Run supervised fine-tuning as configured; returns ``{"metrics": ...}``. The trained model (or LoRA
    adapters) and tokenizer are saved in ``train.output_dir``, ready for ``--model.name_or_path``."""
    return run_recipe(SftRecipe(), cfg, callbacks)
