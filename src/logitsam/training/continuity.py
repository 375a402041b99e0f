"""A resumed run logs what the uninterrupted run would have logged, and trains no step past its end.

transformers' Trainer opens a fresh logging interval at the resumed step: with logging_steps 2 and a
checkpoint at step 3, the record at step 4 averaged step 4 alone while claiming steps 3-4 (its loss and
every logged metric), and the summary's ``train_loss`` averaged only the steps this process ran.
:class:`ContinuedRun` saves the open interval with every checkpoint (``logitsam_interval.json``: the
loss summed since the last log, that log's step, the loss summed over the run before it, and the
per-micro-batch metrics not yet logged, each averaged over ranks as the log would) and puts it back
into the trainer on resume, so the records and the summary equal an uninterrupted run's (the summary is
the mean of the logged interval means when they cover the run, as before).

It overrides private Trainer methods of the pinned transformers (5.24): the interval lives in
``_tr_loss`` / ``_total_loss_scalar`` / ``_globalstep_last_logged``, which ``_inner_training_loop``
resets after loading the checkpoint, so it is restored at the first ``_maybe_log_save_evaluate`` (or
in ``_finalize_training`` when no step is left).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from logitsam.training.logs import whole_run_loss

log = logging.getLogger(__name__)
INTERVAL = "logitsam_interval.json"


def read_interval(checkpoint: str) -> dict[str, Any] | None:
    """The open interval saved with ``checkpoint`` (None: a checkpoint from before, or of plain HF)."""
    try:
        with open(os.path.join(checkpoint, INTERVAL), encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    keys = ("step", "last_logged", "loss_sum", "total_loss", "covers_from", "metrics")
    return saved if isinstance(saved, dict) and all(k in saved for k in keys) else None


class ContinuedRun:
    """Trainer mixin: the logging interval, the whole-run loss and the end of the run carry across a resume
    (see the module docstring). Subclasses with metrics of their own override :meth:`open_metrics` and
    :meth:`reopen_metrics`."""

    _carry: dict[str, Any] | None = None
    _pending = False  # resumed, and the carry not yet put back
    _covers_from = 0  # the first step whose loss _total_loss_scalar holds

    def open_metrics(self) -> dict[str, list[float]]:
        """The per-micro-batch metrics logged at the next log step, averaged over ranks (all ranks call it)."""
        return {}

    def reopen_metrics(self, values: dict[str, list[float]]) -> None:
        """Put :meth:`open_metrics`' values back, before those of the steps run since the resume."""

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        path = resume_from_checkpoint if isinstance(resume_from_checkpoint, str) else None
        self._carry, self._pending, self._covers_from = (read_interval(path) if path else None), bool(path), 0
        if path and self._carry is None:
            log.info("%s holds no logging interval (an older checkpoint): the first record after it may average "
                     "fewer steps than it covers", path)  # fmt: skip
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _apply_carry(self) -> None:
        carry, self._carry, self._pending = self._carry, None, False
        self._covers_from = self._initial_global_step
        if carry is None:
            return
        if carry["step"] != self._initial_global_step:
            log.warning("%s is of step %s, not the resumed step %d: ignored", INTERVAL, carry["step"],
                        self._initial_global_step)  # fmt: skip
            return
        self._tr_loss += carry["loss_sum"]
        self._total_loss_scalar += carry["total_loss"]
        self._globalstep_last_logged = carry["last_logged"]
        self._covers_from = carry["covers_from"]
        self.reopen_metrics(carry["metrics"])

    def _maybe_log_save_evaluate(self, *args: Any, **kwargs: Any) -> None:
        if self._pending:
            self._apply_carry()
        super()._maybe_log_save_evaluate(*args, **kwargs)

    def _finalize_training(self, *args: Any, **kwargs: Any) -> Any:
        if self._pending:
            self._apply_carry()  # resumed at its last step: nothing ran, the summary still covers the run
        return super()._finalize_training(*args, **kwargs)

    def _run_epoch(self, *args: Any, **kwargs: Any) -> None:
        if self.state.global_step >= self.state.max_steps:  # resumed at the last step mid-epoch: HF would run one more
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        loss = self._tr_loss.detach().reshape(1)
        if self.accelerator.num_processes > 1:
            loss = self.accelerator.reduce(loss, reduction="mean")
        record = {
            "step": self.state.global_step,
            "last_logged": self._globalstep_last_logged,
            "loss_sum": float(loss.item()),
            "total_loss": self._total_loss_scalar,
            "covers_from": self._covers_from,
            "metrics": self.open_metrics(),
        }
        if self.args.should_save:  # before the completion marker (on_save), which then vouches for it
            folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            path = os.path.join(self._get_output_dir(trial=trial), folder, INTERVAL)
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                json.dump(record, f)
            os.replace(path + ".tmp", path)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "train_loss" in logs:  # HF's averages the steps this process ran
            step = self.state.global_step
            # the logged interval means (the loss as logged: clean under SAM) when they cover every step, else
            # the trainer's sum carried across resumes, as an uninterrupted run's Trainer reports it
            mean = whole_run_loss(self.state.log_history, step)
            if mean is None and self._covers_from == 0 and step > 0:
                mean = self._total_loss_scalar / step
            if mean is not None:
                logs["train_loss"] = mean
        super().log(logs, start_time)
