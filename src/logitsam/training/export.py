"""``logitsam export``: a LoRA run directory merged into a plain model directory (weights, tokenizer, card) that
``transformers`` loads without peft or logitsam, ready to publish."""

from __future__ import annotations

import os
import re

import torch
import yaml

from logitsam.config.schema import ModelConfig
from logitsam.errors import ConfigError
from logitsam.models import adapter_base, load_model, load_tokenizer
from logitsam.training.commit import share_as_umask
from logitsam.training.modelcard import CARD_NAMES


def export_merged(run_dir: str, out: str) -> str:
    """Merge the LoRA adapters of ``run_dir`` into their base and save the plain model in ``out`` (which must be
    empty or new); returns ``out``. The run's model card comes along with ``library_name: transformers``."""
    if not os.path.isdir(run_dir):
        raise ConfigError(f"RUN_DIR: {run_dir!r} is not a directory")
    if adapter_base(run_dir) is None:
        raise ConfigError(f"RUN_DIR: {run_dir!r} holds no LoRA adapters (adapter_config.json without config.json): "
                          "a full fine-tune is already a plain model directory")  # fmt: skip
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ConfigError(f"--out: {out!r} exists and is not an empty directory; choose another")
    if os.path.realpath(out).startswith(os.path.realpath(run_dir) + os.sep):
        raise ConfigError(f"--out: {out!r} is inside the run directory; choose a directory outside it")
    dtype = "float32"
    try:
        with open(os.path.join(run_dir, "config.yaml"), encoding="utf-8") as f:
            dtype = ((yaml.safe_load(f) or {}).get("model") or {}).get("dtype") or dtype
    except (OSError, yaml.YAMLError, AttributeError):
        pass
    cfg = ModelConfig(name_or_path=run_dir, dtype=dtype)
    tok = load_tokenizer(cfg)
    model = load_model(cfg, vocab_size=len(tok), merge_adapters=True)  # adapters merged: a plain model
    os.makedirs(out, exist_ok=True)
    with torch.no_grad():
        model.save_pretrained(out)
    tok.save_pretrained(out)
    card = next((os.path.join(run_dir, n) for n in CARD_NAMES if os.path.isfile(os.path.join(run_dir, n))), None)
    if card is not None:
        with open(card, encoding="utf-8") as f:
            text = f.read()
        text = re.sub(r"(?m)^library_name: peft$", "library_name: transformers", text, count=1)
        text = text.replace("| LoRA rank |", "| LoRA rank (merged into the weights by `logitsam export`) |", 1)
        with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
            f.write(text)
    share_as_umask([os.path.join(out, n) for n in os.listdir(out)])
    return out
