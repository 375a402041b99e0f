"""The model card (README.md) of a trained run directory: what the model is and how to make it again.

Written offline at the end of a run that saves its model, in the Hugging Face card format (YAML
metadata, then text), so ``huggingface_hub`` / ``push_to_hub`` shows it as is; pushing is left to HF.
A README.md that the run directory's manifest (manifest.py) does not list as ours is the user's: it is
never replaced, PEFT's save is kept from rewriting it, and the card is written as MODEL_CARD.md.
"""

from __future__ import annotations

import logging
import os
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


def _command() -> str:
    """The command line that started this process, when it was the logitsam CLI (else "")."""
    argv = sys.argv
    if not argv or not os.path.basename(argv[0]).startswith(("logitsam", "__main__")):
        return ""
    return "logitsam " + " ".join(shlex.quote(a) for a in argv[1:])


def card_text(cfg: Config, metrics: dict[str, Any], kind: str = "train", command: str | None = None) -> str:
    """README.md text for a run trained with ``cfg`` (the resolved config) ending with ``metrics``.

    kind: "train" (preference training) or "sft".
    """
    m, d, loss, sam, t = cfg.model, cfg.data, cfg.loss, cfg.sam, cfg.train
    data = [os.path.basename(os.path.normpath(p)) for p in d.train_files]
    tags = ["logitsam", "sft" if kind == "sft" else loss.name] + (["logits-sam"] if kind == "train" and sam.rho else [])
    meta = {"library_name": "transformers", "base_model": m.name_or_path, "tags": tags}
    if m.lora_r:
        meta["library_name"] = "peft"
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", ""]
    what = "Supervised fine-tuning" if kind == "sft" else f"Preference training with `{loss.name}`"
    on = ", ".join(f"`{x}`" for x in data)
    title = os.path.basename(os.path.normpath(t.output_dir))
    lines += [f"# {title}", "", f"{what} of `{m.name_or_path}` with logitsam on {on}.", ""]
    rows = [
        ("base model", m.name_or_path),
        ("LoRA rank", m.lora_r or "– (full fine-tuning)"),
        ("data", ", ".join(d.train_files)),
    ]
    if kind == "train":
        hp = {**({"beta": loss.beta} if loss.beta is not None else {}), **(loss.params or {})}
        shown_hp = ", ".join(f"{k} = {v}" for k, v in hp.items()) or "defaults"
        rows += [("loss", loss.name), ("loss hyperparameters", shown_hp), ("reference", loss.reference)]
        rows += [("SAM", f"{sam.mode}, ρ = {sam.rho:g}, method {sam.method}" if sam.rho else "off (ρ = 0)")]
    steps = metrics.get("global_step") or metrics.get("max_steps") or t.max_steps
    rows += [("learning rate", t.learning_rate), ("batch size per device", t.per_device_train_batch_size),
             ("steps", steps), ("epochs", f"{t.num_train_epochs:g}"), ("seed", t.seed)]  # fmt: skip
    lines += ["| setting | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]
    shown = {k: v for k, v in sorted(metrics.items()) if isinstance(v, (int, float)) and not k.startswith("_")}
    if shown:
        lines += ["Final metrics:", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in shown.items()]
        lines.append("")
    cmd = _command() if command is None else command
    sub = "sft" if kind == "sft" else "train"
    lines += ["To make it again (`config.yaml` in this directory is the run's resolved configuration):", "", "```bash",
              f"logitsam {sub} --config config.yaml --train.output_dir=<new directory>", "```"]  # fmt: skip
    if cmd:
        lines += ["", f"The command that made it: `{cmd}`"]
    return "\n".join(lines) + "\n"


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
