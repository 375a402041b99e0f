"""Tokenize preference examples and collate them into chosen+rejected batches.

Tokenization rule (documented for users):
- text prompts are tokenized with the tokenizer's special tokens (e.g. BOS); chat prompts are
  rendered with the tokenizer's chat template and ``add_generation_prompt=True``; an empty prompt
  becomes the tokenizer's BOS (or EOS, GPT-2 style) token, so the first response token is scored;
- a response is the text that follows the prompt (for chat: the rendered conversation with the
  response, minus the rendered prompt), tokenized without special tokens, plus EOS unless the
  rendered response already ends with it;
- a row whose prompt alone exceeds ``max_prompt_length`` tokens is dropped (counted); otherwise each
  response is cut to ``max_length − len(prompt)`` tokens, keeping its start (its EOS is then lost);
- a row whose chosen and rejected token sequences are identical is dropped (counted).

A collated batch stacks the B chosen sequences then the B rejected ones: ``input_ids`` and
``attention_mask`` (2B, T), right-padded; ``labels`` (2B, T) holds the token id at response
positions and IGNORE_INDEX at prompt and padding (not yet shifted for causal LM).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jinja2 import TemplateError

from logitsam.core.logprobs import IGNORE_INDEX
from logitsam.data.examples import PreferenceExample
from logitsam.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class DropCounts:
    """Rows dropped during tokenization, by reason."""

    prompt_too_long: int = 0
    identical_responses: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.prompt_too_long + self.identical_responses


def _data_error(ex: PreferenceExample, key: str, problem: str) -> DataError:
    """A DataError at the example's ``path:line`` source."""
    path, _, line = ex.source.rpartition(":")
    if not (path and line.isdigit()):
        return DataError(ex.source or "<example>", None, key, problem)
    return DataError(path, int(line), key, problem)


def _template(tokenizer: Any, ex: PreferenceExample, key: str, messages: list, **kwargs: Any) -> str:
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except (ValueError, TemplateError) as e:  # no template (ValueError), or one rejecting the conversation (jinja)
        if not getattr(tokenizer, "chat_template", None):  # transformers' message names neither model nor way out
            model = getattr(tokenizer, "name_or_path", "") or "the model"
            raise _data_error(
                ex,
                key,
                f"the tokenizer's chat template failed: model.name_or_path {model!r} has no "
                "chat template, which a conversation needs; give a chat model or the rows as text",
            ) from e
        raise _data_error(ex, key, f"the tokenizer's chat template failed: {' '.join(str(e).split())}") from e
    if not isinstance(text, str):
        raise _data_error(ex, key, f"the chat template rendered {type(text).__name__}, not text")
    return text


def _render_chat(tokenizer: Any, ex: PreferenceExample) -> tuple[str, str, str]:
    prompt = _template(tokenizer, ex, "prompt", ex.prompt, add_generation_prompt=True)
    out = []
    for key, resp in (("chosen", ex.chosen), ("rejected", ex.rejected)):
        full = _template(tokenizer, ex, key, [*ex.prompt, resp])
        if not full.startswith(prompt):
            raise _data_error(ex, key, "the chat template does not render the prompt as a prefix of the reply")
        out.append(full[len(prompt) :])
    return prompt, out[0], out[1]


def _response_ids(tokenizer: Any, text: str) -> list[int]:
    eos = tokenizer.eos_token
    stripped = text.rstrip()
    if eos and stripped.endswith(eos):
        return tokenizer(stripped, add_special_tokens=False)["input_ids"]
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def tokenize_example(
    tokenizer: Any, ex: PreferenceExample, max_length: int, max_prompt_length: int
) -> dict[str, Any] | str:
    """Token ids of one example, or the reason it is dropped ('prompt_too_long' / 'identical_responses')."""
    if ex.is_chat:
        prompt_text, chosen_text, rejected_text = _render_chat(tokenizer, ex)
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    else:
        prompt_text, chosen_text, rejected_text = ex.prompt, ex.chosen, ex.rejected
        prompt_ids = tokenizer(prompt_text)["input_ids"]
    if not prompt_ids:  # nothing before the first response token: it could never be scored
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start is None:
            raise _data_error(ex, "prompt", "empty, and the tokenizer has no BOS/EOS token to start the response from")
        prompt_ids = [start]
    if len(prompt_ids) > max_prompt_length or len(prompt_ids) >= max_length:
        return "prompt_too_long"
    room = max_length - len(prompt_ids)
    chosen_ids = _response_ids(tokenizer, chosen_text)[:room]
    rejected_ids = _response_ids(tokenizer, rejected_text)[:room]
    if chosen_ids == rejected_ids:
        return "identical_responses"
    return {
        "prompt_ids": prompt_ids,
        "chosen_ids": chosen_ids,
        "rejected_ids": rejected_ids,
        "score_chosen": ex.score_chosen,
        "score_rejected": ex.score_rejected,
    }


def tokenize_examples(
    tokenizer: Any, examples: Sequence[PreferenceExample], max_length: int, max_prompt_length: int
) -> tuple[list[dict[str, Any]], DropCounts]:
    """Tokenize all examples; dropped rows are counted (and logged), never silently lost."""
    rows, drops = [], DropCounts()
    for ex in examples:
        res = tokenize_example(tokenizer, ex, max_length, max_prompt_length)
        if isinstance(res, str):
            setattr(drops, res, getattr(drops, res) + 1)
            if len(drops.examples) < 5:
                drops.examples.append(f"{ex.source} ({res})")
        else:
            res["index"] = len(rows)
            rows.append(res)
    if drops.total:
        log.warning(
            "dropped %d of %d rows: %d prompt longer than the limit, %d identical chosen/rejected (e.g. %s)",
            drops.total,
            len(examples),
            drops.prompt_too_long,
            drops.identical_responses,
            ", ".join(drops.examples),
        )
    return rows, drops


def check_pad_id(pad_token_id: Any) -> int:
    """The pad token id a collator pads with; a clear error for None or a non-integer (a tokenizer without
    a pad token: ``load_tokenizer`` sets one, else set ``tokenizer.pad_token``)."""
    if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int) or pad_token_id < 0:
        raise ValueError(
            f"a collator needs the tokenizer's pad token id (an int >= 0), got {pad_token_id!r}: the tokenizer "
            "has no pad token — logitsam's load_tokenizer sets one, or set tokenizer.pad_token = tokenizer.eos_token"
        )
    return pad_token_id


class PreferenceCollator:
    """Collate tokenized rows into the chosen-then-rejected batch described in the module docstring."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = check_pad_id(pad_token_id)

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("PreferenceCollator got no rows: a batch needs at least one preference pair")
        keys = ("prompt_ids", "chosen_ids", "rejected_ids", "index")
        missing = [k for k in keys if any(k not in r for r in rows)]
        if missing:  # rows not made by tokenize_examples (or columns dropped by remove_unused_columns=True)
            raise ValueError(f"PreferenceCollator: rows lack {', '.join(missing)} (tokenize them with "
                             "logitsam.data.batching.tokenize_examples; keep remove_unused_columns=False)")  # fmt: skip
        seqs = [(r["prompt_ids"], r["chosen_ids"]) for r in rows] + [(r["prompt_ids"], r["rejected_ids"]) for r in rows]
        width = max(len(p) + len(c) for p, c in seqs)
        n = len(seqs)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        for i, (p, c) in enumerate(seqs):
            ids = torch.tensor(p + c, dtype=torch.long)
            input_ids[i, : len(ids)] = ids
            attention[i, : len(ids)] = 1
            labels[i, len(p) : len(ids)] = ids[len(p) :]
        batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
        batch["index"] = torch.tensor([r["index"] for r in rows], dtype=torch.long)
        if all(r.get("score_chosen") is not None and r.get("score_rejected") is not None for r in rows):
            batch["score_chosen"] = torch.tensor([r["score_chosen"] for r in rows], dtype=torch.float32)
            batch["score_rejected"] = torch.tensor([r["score_rejected"] for r in rows], dtype=torch.float32)
        if all("ref_logps" in r for r in rows):  # precomputed reference: (chosen, rejected) per row
            ref = torch.tensor([r["ref_logps"] for r in rows], dtype=torch.float32)
            batch["ref_logps"] = torch.cat([ref[:, 0], ref[:, 1]])
        return batch
