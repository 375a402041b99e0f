"""Per-field value rules of the config (``section.key`` -> rule), checked when a value is read.

A rule returns None for a valid value or the problem ("must be > 0"); config.py raises it as a
ConfigError naming the file or override and the key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from logitsam.sam.common import METHODS

Rule = Callable[[Any], "str | None"]


def _at_least(low: float, open_: bool = False) -> Rule:
    def rule(v: float) -> str | None:
        if v < low or (open_ and v == low):
            return f"must be {'>' if open_ else '≥'} {low:g}"
        return None

    return rule


def _one_of(*choices: str) -> Rule:
    return lambda v: None if v in choices else f"is not one of {', '.join(choices)}"


def _nonempty(v: str) -> str | None:
    return "must not be empty" if not v.strip() else None


def _path(v: str) -> str | None:
    return "must not be empty" if not v.strip() else "contains a NUL character" if "\x00" in v else None


def _seed(v: int) -> str | None:
    return None if 0 <= v < 2**32 else "must be in [0, 2**32) (numpy's seed range)"


def _unit(v: float) -> str | None:
    return None if 0.0 <= v < 1.0 else "must be in [0, 1)"


def _max_steps(v: int) -> str | None:
    return None if v == -1 or v > 0 else "must be -1 (train num_train_epochs) or a positive step count"


def _resume(v: str | bool) -> str | None:
    return _path(v) if isinstance(v, str) else None


def _names(v: list[str]) -> str | None:
    return next((f"entry {x!r} {p}" for x in v if (p := _path(x))), None)


def no_named_fields(section: type) -> Rule:
    """The rule of ``train.extra``: no key that ``section`` (the dataclass) already names (bound in schema.py,
    which defines the dataclass and imports this module)."""
    names = {f.name for f in dataclasses.fields(section)}

    def rule(v: dict[str, Any]) -> str | None:
        dup = sorted(set(v) & names)
        return f"repeats {', '.join(dup)}: set train.{dup[0]} instead" if dup else None

    return rule


RULES: dict[str, Rule] = {
    "model.name_or_path": _path,
    "model.ref_name_or_path": _path,
    "model.gguf_file": _path,
    "model.dtype": _one_of("auto", "float32", "bfloat16", "float16", "float64"),
    "model.lora_r": _at_least(0),
    "model.lora_alpha": _at_least(0, open_=True),
    "model.lora_dropout": _unit,
    "data.format": _one_of("auto", "explicit", "hh", "conversational"),
    "data.max_length": _at_least(0, open_=True),
    "data.max_prompt_length": _at_least(0),
    "data.eval_fraction": _unit,
    "data.seed": _seed,
    "data.train_files": _names,
    "data.eval_files": _names,
    "loss.name": _nonempty,
    "loss.reference": _one_of("model", "precomputed", "none"),
    "sam.mode": _one_of("logits", "full"),
    "sam.method": _one_of(*METHODS),
    "train.output_dir": _path,
    "train.per_device_train_batch_size": _at_least(0, open_=True),
    "train.per_device_eval_batch_size": _at_least(0, open_=True),
    "train.gradient_accumulation_steps": _at_least(0, open_=True),
    "train.learning_rate": _at_least(0),
    "train.num_train_epochs": _at_least(0, open_=True),
    "train.max_steps": _max_steps,
    "train.warmup_steps": _at_least(0),
    "train.weight_decay": _at_least(0),
    "train.max_grad_norm": _at_least(0),
    "train.logging_steps": _at_least(0, open_=True),
    "train.save_steps": _at_least(0, open_=True),
    "train.save_total_limit": _at_least(0, open_=True),
    "train.eval_steps": _at_least(0, open_=True),
    "train.seed": _seed,
    "train.report_to": _names,
    "train.resume_from_checkpoint": _resume,
    "train.dataloader_num_workers": _at_least(0),
}
