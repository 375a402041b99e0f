"""A resumed run continues the saved one: its settings may not silently differ from config.yaml.

``train.resume_from_checkpoint`` restores the model, optimizer, scheduler and data position of a
checkpoint; running the rest with another loss, batch size, schedule or SAM setting produces a run
that is neither the old one nor a new one. :func:`check_resume_settings` compares the resolved
settings of the resumed run with the ``config.yaml`` saved by the run (in ``output_dir``, or beside
the checkpoint when ``output_dir`` has none) and refuses differences — listing them — unless
``train.resume_allow_changes`` is set (``train.overwrite_output_dir`` does not switch the checks off: a
resume continues the run and overwrites nothing). config.yaml itself must be the one the checkpoint was
saved under (its marker holds the digest) or one a resume from that checkpoint wrote (run_state.json):
never edited by hand. Keys in
:data:`RESUME_FREE` (where and how often the run writes, logs and evaluates, how it resumes) may
differ freely.

The data are compared too: :func:`data_fingerprint` hashes the tokenized rows (so an edited data
file, another tokenizer or other length limits all count), :func:`save_data_fingerprint` writes it
to ``output_dir/data_fingerprint.json`` when a run starts, and :func:`check_resume_data` refuses a
resume whose rows differ (same switches as the settings).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

from logitsam.config import schema as config_mod
from logitsam.config.fields import yaml_text
from logitsam.config.schema import Config
from logitsam.errors import ConfigError, UserError
from logitsam.training.checkpoints import checkpoint_step, saved_config_digest
from logitsam.training.commit import digest_or_none
from logitsam.training.runstate import accepted_config_digests

# What a resumed run may change without train.resume_allow_changes: where and how often it writes,
# logs and evaluates, and how it resumes — never what it optimises (loss, data, batches, schedule, SAM).
_FREE_TRAIN = (
    "output_dir resume_from_checkpoint resume_allow_incomplete resume_allow_changes overwrite_output_dir "
    "logging_steps save_steps save_total_limit eval_steps per_device_eval_batch_size report_to print_logs "
    "save_model dataloader_num_workers gradient_checkpointing"
)
_FREE_EXTRA = (
    "logging_dir logging_strategy logging_first_step run_name disable_tqdm eval_strategy eval_on_start "
    "save_strategy save_only_model push_to_hub hub_model_id hub_strategy hub_private_repo"
)
RESUME_FREE = {
    "data.eval_files",
    "model.gradient_checkpointing",
    *(f"train.{k}" for k in _FREE_TRAIN.split()),
    *(f"train.extra.{k}" for k in _FREE_EXTRA.split()),
}


def _flat(cfg: Config) -> dict[str, Any]:
    """``section.key`` -> value; mapping fields (train.extra, loss.params) one entry per key."""
    out = {}
    for section, values in cfg.to_dict().items():
        for key, value in values.items():
            if isinstance(value, dict):
                out.update({f"{section}.{key}.{k}": v for k, v in value.items()})
            else:
                out[f"{section}.{key}"] = value
    return out


def differences(old: Config, new: Config, free: Iterable[str] = RESUME_FREE) -> list[str]:
    """``section.key: old -> new`` for every value that differs, except the ``free`` keys."""
    a, b, free = _flat(old), _flat(new), set(free)
    missing = "(unset)"
    return [
        f"{k}: {yaml_text(a.get(k, missing))} -> {yaml_text(b.get(k, missing))}"
        for k in sorted(a.keys() | b.keys())
        if k not in free and a.get(k, missing) != b.get(k, missing)
    ]


def saved_config_path(output_dir: str, checkpoint: str) -> str | None:
    """The config.yaml of the run being resumed: output_dir's, else the one beside the checkpoint."""
    for folder in (output_dir, os.path.dirname(os.path.normpath(checkpoint))):
        path = os.path.join(folder, "config.yaml")
        if os.path.isfile(path):
            return path
    return None


def check_resume_settings(resolved: Config, checkpoint: str) -> None:
    """ConfigError listing the settings that differ from the resumed run's config.yaml (see module doc)."""
    t = resolved.train
    if t.resume_allow_changes:
        return
    path = saved_config_path(t.output_dir, checkpoint)
    recorded = saved_config_digest(checkpoint)
    if path is None and recorded is not None:  # the checkpoint was saved with a config.yaml that is gone now
        raise ConfigError(
            f"train.resume_from_checkpoint: {os.path.join(t.output_dir, 'config.yaml')} is missing, but "
            f"{os.path.basename(os.path.normpath(checkpoint))} was saved by a run that had one, so the settings "
            "cannot be checked against how that state was trained; restore it, or set "
            "train.resume_allow_changes=true to resume with the settings given now"
        )
    if path is None:
        return  # a checkpoint of a plain HF run: nothing to compare with
    allow = "set train.resume_allow_changes=true to resume with them anyway"
    # the reference itself was edited since the save; a resume from this checkpoint rewriting it is no edit
    accepted = (recorded, *accepted_config_digests(os.path.dirname(path), checkpoint_step(checkpoint)))
    if recorded is not None and digest_or_none(path) not in accepted:
        raise ConfigError(
            f"train.resume_from_checkpoint: {path} changed since {os.path.basename(os.path.normpath(checkpoint))} "
            "was saved, so it no longer says how that state was trained; restore it, or "
            "set train.resume_allow_changes=true to resume with the settings given now"
        )
    try:
        saved = config_mod.load(path)
    except UserError as e:
        problem = f"cannot read the resumed run's {path} ({e}); {allow}"
        raise ConfigError(f"train.resume_from_checkpoint: {problem}") from None
    changed = differences(saved, resolved)
    if changed:
        raise ConfigError(
            f"train.resume_from_checkpoint: these settings differ from the resumed run's {path}: "
            f"{'; '.join(changed)}; {allow}"
        )


DATA_FINGERPRINT = "data_fingerprint.json"


def data_fingerprint(rows: Sequence[dict[str, Any]]) -> str:
    """SHA-256 of tokenized rows (every key, in order): the data a run trains on, as the model sees it."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def save_data_fingerprint(output_dir: str, fingerprints: dict[str, str]) -> None:
    path = os.path.join(output_dir, DATA_FINGERPRINT)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(fingerprints, f)
    os.replace(path + ".tmp", path)


def check_resume_data(resolved: Config, fingerprints: dict[str, str], checkpoint: str) -> None:
    """ConfigError when the tokenized training (or evaluation) rows differ from those the resumed run
    started with (its data_fingerprint.json: in output_dir, else beside the checkpoint), or were trained by
    the other command (``kind``: "train" or "sft" — their rows mean different things). A logitsam run
    (config.yaml there) without it is refused too, since every run writes it before its first step;
    a plain HF checkpoint has nothing to compare with. resume_allow_changes skips the check."""
    t = resolved.train
    if t.resume_allow_changes:
        return
    folders = (t.output_dir, os.path.dirname(os.path.normpath(checkpoint)))
    path = next((p for p in (os.path.join(f, DATA_FINGERPRINT) for f in folders) if os.path.lexists(p)), None)
    config = saved_config_path(t.output_dir, checkpoint)
    logitsam_run = config is not None or saved_config_digest(checkpoint) is not None
    if path is None and not logitsam_run:
        return  # a checkpoint of a plain HF run
    try:
        if path is None:
            raise OSError
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        if not isinstance(saved, dict) or not isinstance(saved.get("training"), str):
            raise ValueError("no training-rows fingerprint")  # e.g. blanked to {} since
    except (OSError, ValueError):  # removed or damaged since
        where = path or os.path.join(t.output_dir, DATA_FINGERPRINT)
        raise ConfigError(
            f"train.resume_from_checkpoint: {where} is missing or unreadable, so the data cannot be checked "
            "against the data the run started with; set train.resume_allow_changes=true to resume without the check"
        ) from None
    was, now = saved.get("kind"), fingerprints.get("kind")
    if was is not None and now is not None and was != now:  # older runs wrote no kind: nothing to compare
        raise ConfigError(
            f"train.resume_from_checkpoint: {t.output_dir} holds a `logitsam {was}` run ({path}); "
            f"`logitsam {now}` cannot continue it — resume it with `logitsam {was}`, or give this run another "
            "train.output_dir"
        )
    changed = [k for k, v in fingerprints.items() if k != "kind" and saved.get(k, v) != v]
    if changed:
        raise ConfigError(
            f"train.resume_from_checkpoint: the {' and '.join(changed)} rows differ from those the run started with "
            f"({path}): a data file, the tokenizer or a length limit changed since; resuming would continue on "
            "other data — restore them, or set train.resume_allow_changes=true to resume anyway"
        )


FULL_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def check_resume_parameters(resolved: Config, checkpoint: str) -> None:
    """ConfigError when the checkpoint's trained parameters cannot be those of this run — full weights
    resumed as LoRA, LoRA as full fine-tuning, or another LoRA rank / target set: its optimizer state
    belongs to other parameters, so no setting (not even ``train.resume_allow_changes``) can continue it."""
    m = resolved.model
    adapter_cfg = os.path.join(checkpoint, "adapter_config.json")
    saved_lora = os.path.isfile(adapter_cfg)
    full = any(os.path.exists(os.path.join(checkpoint, n)) for n in FULL_WEIGHTS)
    way_out = "start a new run instead (another output_dir, or train.overwrite_output_dir=true)"
    name = os.path.basename(os.path.normpath(checkpoint))
    if m.lora_r and not saved_lora and full:
        raise ConfigError(
            f"train.resume_from_checkpoint: {name} holds a full fine-tuning run; model.lora_r = {m.lora_r} would train "
            f"LoRA adapters instead, so its optimizer state belongs to other parameters; {way_out}"
        )
    if not m.lora_r and saved_lora:
        raise ConfigError(
            f"train.resume_from_checkpoint: {name} holds LoRA adapters; model.lora_r = 0 would train every "
            f"parameter, so its optimizer state belongs to other parameters; {way_out}"
        )
    if m.lora_r and saved_lora:
        try:
            with open(adapter_cfg, encoding="utf-8") as f:
                saved = json.load(f)
        except (OSError, ValueError):
            return
        if isinstance(saved, dict) and saved.get("r") not in (None, m.lora_r):
            raise ConfigError(
                f"train.resume_from_checkpoint: {name} holds LoRA adapters of rank {saved['r']}, this run "
                f"model.lora_r = {m.lora_r}: its optimizer state belongs to other parameters; {way_out}"
            )
