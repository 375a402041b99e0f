"""Configuration: dataclass sections loaded from YAML, checked command-line overrides, saving.

A run's config has five sections — ``model``, ``data``, ``loss``, ``sam``, ``train`` — each a
dataclass. YAML files give any subset; ``--section.key=value`` overrides parse the value as YAML
and check it against the field's type (``--loss.params.gamma=0.5`` sets one entry of a mapping).
Unknown sections/keys, wrong types, NaN/inf and values outside a field's range (``RULES``) are
ConfigErrors that name the file (or the override) and the key, raised when the value is read.
Cross-field and environment checks (files, installed integrations) live in ``run.check_config``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import ConfigError


@dataclass
class ModelConfig:
    """Policy / reference / tokenizer. ``name_or_path``: HF name, local dir, or a dir/file with GGUF."""

    name_or_path: str = "tiny-random"
    gguf_file: str | None = None
    ref_name_or_path: str | None = None  # default: same as the policy
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (auto: fp32 on CPU, bf16 where supported)
    lora_r: int = 0  # > 0 enables LoRA (reference = adapters disabled)
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | None = None
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False


@dataclass
class DataConfig:
    """Preference data files and tokenization limits."""

    train_files: list[str] = field(default_factory=list)
    eval_files: list[str] = field(default_factory=list)
    format: str = "auto"  # auto | explicit | hh | conversational
    max_length: int = 512  # prompt + response tokens
    max_prompt_length: int = 256
    eval_fraction: float = 0.0  # hold out this fraction of train rows when no eval_files
    seed: int = 0


@dataclass
class LossConfig:
    """Which registered loss and its hyperparameters (unknown keys are rejected by the registry)."""

    name: str = "dpo"
    beta: float | None = None  # shorthand for params['beta'] where the loss has one
    params: dict[str, Any] = field(default_factory=dict)
    reference: str = "model"  # model | precomputed (reference log-probs cached on disk) | none


@dataclass
class SamConfig:
    """logits-SAM (mode 'logits', ρ ≠ 0), full-model SAM (mode 'full') or off (ρ = 0)."""

    rho: float = 0.0
    mode: str = "logits"  # logits | full
    method: str = "auto"  # weight | gram | chunked | auto (gram is forced under FSDP / ZeRO-3)
    adaptive: bool = False  # ε ∝ |W|⊙g as the paper's code's sam_adaptive (weight/chunked/auto, not gram)


@dataclass
class TrainConfig:
    """The subset of transformers.TrainingArguments a recipe usually sets; ``extra`` passes the rest."""

    output_dir: str = "runs/train"
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-7
    num_train_epochs: float = 1.0
    max_steps: int = -1
    warmup_steps: float = 0.1  # < 1: fraction of the total steps (transformers semantics)
    lr_scheduler_type: str = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    logging_steps: int = 1
    save_steps: int = 500
    save_total_limit: int | None = None
    eval_steps: int | None = None
    seed: int = 42
    bf16: bool | None = None  # None: on when the device supports it
    gradient_checkpointing: bool | None = None
    report_to: list[str] = field(default_factory=lambda: ["none"])
    resume_from_checkpoint: str | bool | None = None  # a checkpoint dir, 'last' or true (newest complete one)
    resume_allow_incomplete: bool = False  # resume from a checkpoint with missing files (warns loudly)
    overwrite_output_dir: bool = False  # reuse an output_dir holding a previous run (its metrics/checkpoints go)
    save_model: bool = True  # save the final model in output_dir (studies that evaluate in-process skip it)
    print_logs: bool = True  # one compact line per log record under the progress bar (metrics.jsonl regardless)
    dataloader_num_workers: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sam: SamConfig = field(default_factory=SamConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


# ---- value rules, checked when a value is read -------------------------------------------------
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


def _no_named_fields(v: dict[str, Any]) -> str | None:
    dup = sorted(set(v) & {f.name for f in dataclasses.fields(TrainConfig)})
    return f"repeats {', '.join(dup)}: set train.{dup[0]} instead" if dup else None


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
    "train.extra": _no_named_fields,
}


def _finite(value: Any, where: str) -> Any:
    """``value`` unless a float anywhere in it (nested lists/mappings too) is NaN or infinite."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {value!r} is not a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            _finite(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _finite(v, f"{where}[{i}]")
    return value


def _check(value: Any, tp: Any, where: str) -> Any:
    """Value checked (and lightly coerced: int -> float) against a field type; NaN/inf rejected."""
    return _finite(_typed(value, tp, where), where)


def _typed(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        errors = []
        for arm in typing.get_args(tp):
            if arm is type(None):
                continue
            try:
                return _typed(value, arm, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (inner,) = typing.get_args(tp) or (Any,)
        return [_typed(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"{where}: keys must be strings, got {bad[0]!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads '1e-4' as a string
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _set(cfg: Config, section: Any, key: Any, value: Any, where: str) -> None:
    if not isinstance(section, str) or section not in SECTIONS:
        raise ConfigError(f"{where}: unknown section {section!r} (known: {', '.join(SECTIONS)})")
    obj = getattr(cfg, section)
    hints = typing.get_type_hints(type(obj))
    field_name, _, sub = key.partition(".") if isinstance(key, str) else (key, "", "")
    if field_name not in hints or (sub and typing.get_origin(hints[field_name]) is not dict):
        raise ConfigError(f"{where}: unknown key {section}.{key} (known: {', '.join(hints)})")
    if sub:  # one entry of a mapping field, e.g. loss.params.gamma
        value = {**getattr(obj, field_name), sub: value}
    name = f"{section}.{field_name}"
    value = _check(value, hints[field_name], f"{where}: {name}")
    rule = RULES.get(name)
    problem = rule(value) if rule is not None and value is not None else None
    if problem:
        raise ConfigError(f"{where}: {name}: {value!r} {problem}")
    setattr(obj, field_name, value)


def from_dict(data: dict[str, Any], source: str = "<dict>") -> Config:
    """Config from a nested mapping; every key is checked."""
    cfg = Config()
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    for section, values in data.items():
        if values is None and section in SECTIONS:  # an empty section ("train:" with nothing under it)
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {section!r} must be a mapping")
        for key, value in values.items():
            _set(cfg, section, key, value, source)
    return cfg


def load(path: str) -> Config:
    """Config from a YAML file."""
    if not os.path.exists(path):
        raise ConfigError(f"{path}: config file not found")
    if os.path.isdir(path):
        raise ConfigError(f"{path}: is a directory, not a YAML config file")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")  # an editor's BOM is harmless
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}:{line}: not valid UTF-8 (byte 0x{raw[e.start]:02x})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    return from_dict({} if data is None else data, path)


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``--section.key=value`` (or ``section.key=value``) strings; the value is read as YAML."""
    for raw in overrides:
        text = raw[2:] if raw.startswith("--") else raw
        if "=" not in text or "." not in text.split("=", 1)[0]:
            raise ConfigError(f"override {raw!r}: expected --section.key=value")
        dotted, value_text = text.split("=", 1)
        section, key = dotted.split(".", 1)
        try:
            value = yaml.safe_load(value_text) if value_text != "" else ""
        except (yaml.YAMLError, RecursionError):
            value = value_text
        _set(cfg, section, key, value, f"override {raw!r}")
    return cfg


def save(cfg: Config, path: str) -> None:
    """Write the resolved config as YAML (loadable by :func:`load`)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
