"""Configuration: dataclass sections loaded from YAML, checked command-line overrides, saving.

A run's config has five sections — ``model``, ``data``, ``loss``, ``sam``, ``train`` — each a
dataclass. YAML files give any subset; ``--section.key=value`` overrides parse the value as YAML
and check it against the field's type. Unknown sections/keys and wrong types are ConfigErrors
that name the file (or the override) and the key.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
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
    resume_from_checkpoint: str | None = None
    save_model: bool = True  # save the final model in output_dir (studies that evaluate in-process skip it)
    print_logs: bool = True  # print each log record under the progress bar (metrics.jsonl has them regardless)
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


def _check(value: Any, tp: Any, where: str) -> Any:
    """Value checked (and lightly coerced: int -> float) against a field type."""
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
                return _check(value, arm, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (inner,) = typing.get_args(tp) or (Any,)
        return [_check(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
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


def _set(cfg: Config, section: str, key: str, value: Any, where: str) -> None:
    if section not in SECTIONS:
        raise ConfigError(f"{where}: unknown section {section!r} (known: {', '.join(SECTIONS)})")
    obj = getattr(cfg, section)
    hints = typing.get_type_hints(type(obj))
    if key not in hints:
        raise ConfigError(f"{where}: unknown key {section}.{key} (known: {', '.join(hints)})")
    setattr(obj, key, _check(value, hints[key], f"{where}: {section}.{key}"))


def from_dict(data: dict[str, Any], source: str = "<dict>") -> Config:
    """Config from a nested mapping; every key is checked."""
    cfg = Config()
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {section!r} must be a mapping")
        for key, value in values.items():
            _set(cfg, section, key, value, source)
    return cfg


def load(path: str) -> Config:
    """Config from a YAML file."""
    if not os.path.exists(path):
        raise ConfigError(f"{path}: config file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    return from_dict(data, path)


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
        except yaml.YAMLError:
            value = value_text
        _set(cfg, section, key, value, f"override {raw!r}")
    return cfg


def save(cfg: Config, path: str) -> None:
    """Write the resolved config as YAML (loadable by :func:`load`)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
