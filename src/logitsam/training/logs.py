"""What a run reports while it trains: ``metrics.jsonl`` records and one compact console line each.

HF's ProgressCallback prints every log record as a dict of strings (``{'loss': '0.6931', ...}``);
logitsam prints one line of numbers per logging step instead, the quantities that show squeezing
first::

    step 12 | loss 0.6931 | margin 0.012 | acc 0.50 | chosen drift -0.03 | ... | sam eps 1e-4

Evaluation records print as ``eval 12 | loss ...`` and the end of training as
``step 6 | done in 15.6 s | mean loss 0.5612``. ``metrics.jsonl`` keeps every key, as numbers.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

from tqdm.auto import tqdm
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import has_length

# (log key without the eval_ prefix, console label, decimals or None for 3 significant digits), in console order.
CONSOLE_FIELDS: tuple[tuple[str, str, int | None], ...] = (
    ("loss", "loss", 4),
    ("rewards/margins", "margin", None),
    ("rewards/accuracies", "acc", 2),
    ("logps/chosen_drift", "chosen drift", None),
    ("logps/rejected_drift", "rejected drift", None),
    ("probs/top_token", "top token", None),
    ("sam/loss_post", "sam loss", 4),
    ("sam/eps_norm", "sam eps", None),
    ("sam/rho_g_over_loss", "ρ‖g‖/L", None),
    ("grad_norm", "grad", None),
    ("learning_rate", "lr", None),
)


def number(value: float, decimals: int | None = None) -> str:
    """``value`` with ``decimals`` fixed decimals, or 3 significant digits (1e-4, not 0.0001 or 1e-04)."""
    if decimals is not None:
        return f"{value:.{decimals}f}"
    if value != 0 and math.isfinite(value) and not 1e-3 <= abs(value) < 1e5:
        mantissa, exponent = f"{value:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:.3g}"


def numeric(logs: Mapping[str, Any]) -> dict[str, int | float]:
    """The numeric entries of a log record as plain ints/floats (0-d tensors and numpy scalars included)."""
    out: dict[str, int | float] = {}
    for k, v in logs.items():
        if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:
            v = v.item()
        if isinstance(v, bool):
            v = int(v)
        if isinstance(v, (int, float)):
            out[k] = v
    return out


def log_line(step: int, logs: Mapping[str, Any]) -> str:
    """One console line for a log record at ``step`` (see the module docstring)."""
    values = numeric(logs)
    if "train_runtime" in values:
        parts = [f"step {step}", f"done in {values['train_runtime']:.1f} s"]
        if "train_loss" in values:
            parts.append(f"mean loss {number(values['train_loss'], 4)}")
        return " | ".join(parts)
    prefix = "eval_" if any(k.startswith("eval_") for k in values) else ""
    parts = [f"{'eval' if prefix else 'step'} {step}"]
    for key, label, decimals in CONSOLE_FIELDS:
        if prefix + key in values:
            parts.append(f"{label} {number(values[prefix + key], decimals)}")
    return " | ".join(parts)


def whole_run_loss(history: list[dict[str, Any]], global_step: int) -> float | None:
    """Mean training loss over steps 1..global_step from the logged ``loss`` records (each the mean of its
    logging interval, weighted by the interval's length); None unless they cover every step."""
    by_step = {r["step"]: r["loss"] for r in history if "loss" in r and isinstance(r.get("step"), int)}
    total = prev = 0
    weighted = 0.0
    for step in sorted(by_step):
        if not (isinstance(by_step[step], (int, float)) and math.isfinite(by_step[step])) or step <= prev:
            return None
        weighted += (step - prev) * by_step[step]
        total, prev = total + step - prev, step
    return weighted / total if total and total == global_step else None


class JsonlMetrics(TrainerCallback):
    """Appends every log record (with its step and epoch) to ``<output_dir>/metrics.jsonl`` on the main
    process; values are numbers (non-numeric entries are left out)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            os.makedirs(args.output_dir, exist_ok=True)
            record = {"step": state.global_step, "epoch": state.epoch, **numeric(logs)}
            with open(os.path.join(args.output_dir, "metrics.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


class ConsoleProgress(ProgressCallback):
    """HF's progress bars, named after the run (``args.run_name``, else output_dir's last part) so
    several runs in one process (a study) tell their bars apart, with one compact line per log
    record under them (``show=False``: bars only)."""

    def __init__(self, show: bool = True) -> None:
        super().__init__()
        self.show = show

    @staticmethod
    def run_name(args: Any) -> str:
        return args.run_name or os.path.basename(os.path.normpath(args.output_dir))

    def on_train_begin(self, args, state, control, **kwargs):  # ProgressCallback's, with a name
        if state.is_world_process_zero:
            self.training_bar = tqdm(total=state.max_steps, dynamic_ncols=True, desc=f"{self.run_name(args)}: train")
        self.current_step = 0

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if state.is_world_process_zero and self.prediction_bar is None and has_length(eval_dataloader):
            self.prediction_bar = tqdm(
                total=len(eval_dataloader),
                leave=self.training_bar is None,
                dynamic_ncols=True,
                desc=f"{self.run_name(args)}: eval",
            )
        super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.show and state.is_world_process_zero and logs:
            line = log_line(state.global_step, logs)
            if self.training_bar is not None:
                self.training_bar.write(line)
            else:
                print(line, flush=True)


class ConsolePrinter(TrainerCallback):
    """The compact line without progress bars (``disable_tqdm``), replacing HF's PrinterCallback."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_local_process_zero and logs:
            print(log_line(state.global_step, logs), flush=True)


def install_console(trainer: Any, show: bool = True) -> None:
    """Replace HF's ProgressCallback / PrinterCallback on ``trainer`` by the compact line (``show=False``:
    progress bars and nothing else)."""
    if trainer.args.disable_tqdm:
        trainer.remove_callback(PrinterCallback)
        if show:
            trainer.add_callback(ConsolePrinter())
    else:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(ConsoleProgress(show))
