"""The model card (README.md) of a trained run directory: what the model is and how to make it again.

Written offline at the end of a run that saves its model, in the Hugging Face card format (YAML
metadata, then text), so ``huggingface_hub`` / ``push_to_hub`` shows it as is; pushing is left to HF.
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Any

import yaml

from logitsam.config.schema import Config


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


def write_model_card(cfg: Config, metrics: dict[str, Any], kind: str = "train") -> str:
    """Write ``train.output_dir/README.md`` (never over a README.md that is not ours); returns its path."""
    path = os.path.join(cfg.train.output_dir, "README.md")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if "logitsam" not in f.read(4096):
                return path  # someone's own README: keep it
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(card_text(cfg, metrics, kind))
    os.replace(path + ".tmp", path)
    return path
