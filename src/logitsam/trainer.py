"""PreferenceTrainer: transformers.Trainer with a preference loss, logits-SAM and squeeze metrics.

One code path for CPU, one GPU, DDP, FSDP and ZeRO-3: :class:`~logitsam.objective.Objective` turns a
batch into the loss (fused head by default; full logits + ``gram`` under FSDP / ZeRO-3 so the
sharded head is never gathered). The loss comes from the registry; nothing here matches on loss
names. Metrics stay on the device until a log step (no host sync per metric per step).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import has_length

from .config import SamConfig
from .losses import LossSpec
from .objective import Objective, ObjectiveOutput, model_sequence_logps
from .sam_full import full_sam_backward


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the message names the step. Checkpoints already saved stay valid."""


class JsonlMetrics(TrainerCallback):
    """Appends every log record (with its step) to ``<output_dir>/metrics.jsonl`` on the main process."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            os.makedirs(args.output_dir, exist_ok=True)
            with open(os.path.join(args.output_dir, "metrics.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")


class NamedProgress(ProgressCallback):
    """Progress bars named after the run (``args.run_name``, else output_dir's last part), so
    several runs in one process (a study) tell their bars apart; ``print_logs=False``: log
    records are not printed under the bar (metrics.jsonl has them)."""

    def __init__(self, print_logs: bool = True) -> None:
        super().__init__()
        self.print_logs = print_logs

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
        if self.print_logs:
            return super().on_log(args, state, control, logs=logs, **kwargs)
        return None


class PreferenceTrainer(Trainer):
    """Trainer for any registered preference loss, with logits-SAM or full SAM.

    loss_spec / loss_params: from :mod:`logitsam.losses`. sam: rho, mode (logits | full), method.
    ref_model: frozen reference (None: precomputed ``ref_logps`` in the batch, or the policy with
    its LoRA adapters disabled, or no reference for reference-free losses). chunk_rows: rows of
    logits per fused-head chunk (None: sized for the device).
    """

    def __init__(
        self,
        *args: Any,
        loss_spec: LossSpec,
        loss_params: dict[str, Any],
        sam: SamConfig,
        ref_model: Any = None,
        print_logs: bool = True,
        chunk_rows: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.loss_spec, self.loss_params, self.sam = loss_spec, loss_params, sam
        rho = sam.rho if sam.mode == "logits" else 0.0
        self.objective = Objective(loss_spec, loss_params, rho=rho, method=sam.method, chunk_rows=chunk_rows)
        self.model_accepts_loss_kwargs = False  # our loss is a per-micro-batch mean: scale by GA steps
        self._stored: dict[str, dict[str, list[Tensor]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self.add_callback(JsonlMetrics())
        if self.pop_callback(ProgressCallback) is not None:  # absent with disable_tqdm
            self.add_callback(NamedProgress(print_logs))
        self.sharded = self.is_fsdp_enabled or (
            self.is_deepspeed_enabled and getattr(self.accelerator.state.deepspeed_plugin, "zero_stage", 0) == 3
        )
        self.ref_model = ref_model
        if ref_model is not None:
            ref_model = ref_model.to(self.args.device)  # FSDP's prepare does not move an eval model
            if self.is_deepspeed_enabled or self.is_fsdp_enabled:
                ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
            self.ref_model = ref_model

    @torch.no_grad()
    def reference_logps(self, model: Any, batch: dict[str, Tensor]) -> Tensor | None:
        """(2B,) summed reference log-probs of the batch's sequences, or None for reference-free losses."""
        if not self.loss_spec.needs_reference:
            return None
        if "ref_logps" in batch:
            return batch["ref_logps"]
        args = (batch["input_ids"], batch["attention_mask"], batch["labels"])
        if self.ref_model is not None:
            return model_sequence_logps(self.ref_model, *args)
        unwrapped = self.accelerator.unwrap_model(model)  # LoRA: the policy without its adapters
        if not hasattr(unwrapped, "disable_adapter"):
            raise RuntimeError("this loss needs a reference model, but none was given and the policy has no adapters")
        with unwrapped.disable_adapter():
            return model_sequence_logps(model, *args)

    def _store(self, mode: str, metrics: dict[str, Tensor]) -> None:
        for k, v in metrics.items():
            self._stored[mode][k].append(v.detach().float().reshape(()))

    def _check_finite(self, loss: Tensor) -> None:
        if not torch.isfinite(loss.detach()):
            step = self.state.global_step + 1
            where = last_good_state(self.args.output_dir)
            raise TrainingDiverged(f"non-finite loss ({loss.item()}) at step {step}; {where}")

    # ---- Trainer hooks --------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        ref = self.reference_logps(model, inputs)
        res: ObjectiveOutput = self.objective(model, inputs, ref, sam=mode == "train", sharded=self.sharded)
        self._check_finite(res.loss)
        self._store(mode, res.metrics)
        return (res.loss, {"sums": res.sums}) if return_outputs else res.loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not (self.sam.mode == "full" and self.sam.rho != 0):
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        inputs = self._prepare_inputs(inputs)
        gas = self.current_gradient_accumulation_steps
        with self.compute_loss_context_manager():
            ref = self.reference_logps(model, inputs)  # once: the reference does not move with θ
        passes: list[ObjectiveOutput] = []

        def closure() -> Tensor:
            # The clean pass must not trigger DDP's gradient all-reduce (it never reaches .grad).
            first = not passes
            ctx = self.accelerator.no_sync(model) if first and self.accelerator.num_processes > 1 else nullcontext()
            with ctx, self.compute_loss_context_manager():
                passes.append(self.objective(model, inputs, ref, sam=False, sharded=self.sharded))
            if first:
                self._check_finite(passes[0].loss)
            return passes[-1].loss

        res = full_sam_backward(
            model.parameters(), closure, rho=self.sam.rho, backward=lambda loss: self.accelerator.backward(loss / gas)
        )
        self._store("train", passes[0].metrics)  # the clean pass, as in logits-SAM mode
        self._store("train", {k: torch.tensor(v) for k, v in res.metrics.items()})
        return res.loss_post / gas

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if "loss" in logs else "eval"
        prefix = "eval_" if mode == "eval" else ""
        stored = self._stored[mode]
        if stored:
            keys = sorted(stored)
            means = torch.stack([torch.stack([t.to(self.args.device) for t in stored[k]]).mean() for k in keys])
            means = self.accelerator.reduce(means, reduction="mean") if self.accelerator.num_processes > 1 else means
            logs.update({prefix + k: round(float(v), 6) for k, v in zip(keys, means.tolist(), strict=True)})
            stored.clear()
        super().log(logs, start_time)


def last_good_state(output_dir: str) -> str:
    """Which saved state to resume from after a divergence: the newest checkpoint whose weights are finite."""
    import re

    from safetensors.torch import load_file

    found = []
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            m = re.fullmatch(r"checkpoint-(\d+)", name)
            if m and os.path.isdir(os.path.join(output_dir, name)):
                found.append((int(m.group(1)), os.path.join(output_dir, name)))
    for step, path in sorted(found, reverse=True):
        files = [f for f in os.listdir(path) if f.endswith(".safetensors")]
        try:
            finite = bool(files) and all(
                bool(torch.isfinite(t).all()) for f in files for t in load_file(os.path.join(path, f)).values()
            )
        except Exception:  # unreadable or partial: not a good state
            finite = False
        if finite:
            return (
                f"the newest checkpoint with finite weights is {path} (step {step}); "
                f"resume with --train.resume_from_checkpoint={path}"
            )
    if found:
        return f"no checkpoint in {output_dir} has finite weights ({len(found)} found); start again"
    return f"no checkpoint was saved in {output_dir} before this step"
