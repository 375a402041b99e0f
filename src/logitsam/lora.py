"""LoRA adapters on a loaded policy (peft): the target modules checked before any work, peft's errors
named by the config key."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from logitsam.config.schema import ModelConfig
from logitsam.errors import ConfigError, one_line


def check_lora_targets(model: Any, cfg: ModelConfig) -> None:
    """ConfigError naming ``model.lora_target_modules`` when none of them is a module of ``model``
    (peft's rule: a module name equal to a target or ending in ``.<target>``), before any work."""
    targets = cfg.lora_target_modules
    if cfg.lora_r <= 0 or not targets:
        return
    names = [n for n, _ in model.named_modules()]
    if not any(n == t or n.endswith(f".{t}") for t in targets for n in names):
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ConfigError(
            f"model.lora_target_modules: none of {targets} is a module of the model (its linear layers: "
            f"{', '.join(linear) or 'none'})"
        )


@contextmanager
def quiet_peft() -> Iterator[None]:
    """peft reads model.is_gradient_checkpointing, deprecated by transformers 5 (FutureWarning) in favour of
    is_activation_checkpointing; the read is inside peft, so only this exact message is silenced, there."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def apply_lora(model: Any, cfg: ModelConfig) -> Any:
    """Wrap ``model`` with LoRA adapters when ``cfg.lora_r > 0``."""
    if cfg.lora_r <= 0:
        return model
    check_lora_targets(model, cfg)
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        task_type="CAUSAL_LM",
        target_modules=cfg.lora_target_modules or "all-linear",
    )
    with quiet_peft():
        try:
            return get_peft_model(model, lora)
        except (ValueError, TypeError) as e:  # peft's NoMatchingPeftModuleError, unsupported module types
            raise ConfigError(f"model.lora_target_modules: {one_line(e, 300)}") from None
