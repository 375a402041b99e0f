"""PreferenceTrainer: transformers.Trainer with a preference loss, logits-SAM and squeeze metrics.

One code path for CPU, one GPU, DDP, FSDP and ZeRO-3: :class:`~logitsam.core.objective.Objective` turns a
batch into the loss (fused head by default; full logits + ``gram`` under FSDP / ZeRO-3 so the
sharded head is never gathered). The loss comes from the registry; nothing here matches on loss
names. Metrics stay on the device until a log step (no host sync per metric per step).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections import defaultdict
from contextlib import nullcontext
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor
from transformers import Trainer

from logitsam.config.schema import SamConfig
from logitsam.core.objective import Objective, ObjectiveOutput
from logitsam.core.registry import LossSpec
from logitsam.sam.common import check_adaptive, check_method, check_rho
from logitsam.sam.full import full_sam_backward
from logitsam.training.checkpoints import list_checkpoints
from logitsam.training.continuity import ContinuedRun
from logitsam.training.logs import JsonlMetrics, install_console
from logitsam.training.reference import batch_reference_logps

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the message names the step. Checkpoints already saved stay valid."""


def head_is_sharded(trainer: Trainer) -> bool:
    """Whether ``trainer`` shards the model (FSDP or ZeRO-3): the objective then never gathers the head."""
    return trainer.is_fsdp_enabled or (
        trainer.is_deepspeed_enabled and getattr(trainer.accelerator.state.deepspeed_plugin, "zero_stage", 0) == 3
    )


class StopOnDivergence:
    """Trainer mixin: a logged non-finite gradient norm stops the run (TrainingDiverged), as a non-finite
    loss does. Clipping scales such a gradient to zero or NaN, so the run would go on without learning
    (e.g. a huge sam.rho overflowing ‖g‖²) and report success. fp16 with a loss scaler is exempt: there
    an overflow only skips the step while the scale is being found."""

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        norm = logs.get("grad_norm")
        bad = isinstance(norm, (int, float)) and not math.isfinite(norm) and not self.args.fp16
        super().log(logs, start_time)  # logged first: metrics.jsonl shows the step
        if bad:
            where = last_good_state(self.args.output_dir)
            raise TrainingDiverged(
                f"non-finite gradient norm ({norm}) at step {self.state.global_step}: the update was lost to "
                f"overflow (a learning rate or sam.rho far too large?); {where}"
            )


class PreferenceTrainer(StopOnDivergence, ContinuedRun, Trainer):
    """Trainer for any registered preference loss, with logits-SAM or full SAM.

    loss_spec / loss_params: from :mod:`logitsam.core.losses`. sam: rho, mode (logits | full), method.
    ref_model: frozen reference (None: precomputed ``ref_logps`` in the batch, or the policy with
    its LoRA adapters disabled, or no reference for reference-free losses). chunk_rows: rows of
    logits per fused-head chunk (None: sized for the device).
    """

    def __init__(
        self,
        *args: Any,
        loss_spec: LossSpec,
        loss_params: dict[str, Any],
        sam: SamConfig | dict[str, Any] | None = None,
        ref_model: Any = None,
        print_logs: bool = True,
        chunk_rows: int | None = None,
        **kwargs: Any,
    ) -> None:
        sam = _checked_sam(sam)  # as strict as the CLI: a typo never trains silently without SAM
        args_ = kwargs.get("args", args[1] if len(args) > 1 else None)
        if args_ is not None and getattr(args_, "remove_unused_columns", False):
            # the collated batch carries prompt/response ids the model's forward does not name
            log.warning("PreferenceTrainer sets TrainingArguments.remove_unused_columns=False (its batches need it)")
            args_.remove_unused_columns = False
        super().__init__(*args, **kwargs)
        self.loss_spec, self.loss_params, self.sam = loss_spec, loss_params, sam
        rho = sam.rho if sam.mode == "logits" else 0.0
        adaptive = getattr(sam, "adaptive", False)
        self.objective = Objective(
            loss_spec, loss_params, rho=rho, method=sam.method, chunk_rows=chunk_rows, adaptive=adaptive
        )
        self.model_accepts_loss_kwargs = False  # our loss is a per-micro-batch mean: scale by GA steps
        self._stored: dict[str, dict[str, list[Tensor]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self.add_callback(JsonlMetrics())
        install_console(self, show=print_logs)
        self.sharded = head_is_sharded(self)
        if rho:
            check_adaptive(sam.method, adaptive, has_weight=not self.sharded)
        self.ref_model = ref_model
        if ref_model is not None:
            ref_model = ref_model.to(self.args.device)  # FSDP's prepare does not move an eval model
            if self.is_deepspeed_enabled or self.is_fsdp_enabled:
                ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
            self.ref_model = ref_model

    @torch.no_grad()
    def reference_logps(self, model: Any, batch: dict[str, Tensor]) -> Tensor | None:
        """(2B,) summed reference log-probs of the batch's sequences, or None for reference-free losses."""
        return self.reference(model, batch)[0]

    @torch.no_grad()
    def reference(self, model: Any, batch: dict[str, Tensor]) -> tuple[Tensor | None, Tensor | None]:
        """(reference sums (2B,) or None, their shared-prefix part (2B,) when the loss uses LD-DPO, else None)."""
        if not self.loss_spec.needs_reference:
            return None, None
        shared = "shared" in self.objective.extras
        if "ref_logps" in batch:
            if shared:
                raise RuntimeError("ld_alpha < 1 needs the reference's shared-prefix sums, which a precomputed "
                                   "reference cache does not hold: use loss.reference: model")  # fmt: skip
            return batch["ref_logps"], None
        seqs = (batch["input_ids"], batch["attention_mask"], batch["labels"])
        # The policy's forward runs under accelerate's autocast (bf16: true wraps it); a reference model that
        # accelerate never prepared would run in its weights' dtype: head-sized fp32 products every step.
        # The same autocast here makes it follow the policy (a no-op without mixed precision).
        with self.accelerator.autocast():
            unwrapped = self.accelerator.unwrap_model(model)
            ref = batch_reference_logps(seqs, model, unwrapped, self.ref_model, shared=shared)
        return ref if shared else (ref, None)

    def _store(self, mode: str, metrics: dict[str, Tensor]) -> None:
        for k, v in metrics.items():
            self._stored[mode][k].append(v.detach().float().reshape(()))

    def open_metrics(self) -> dict[str, list[float]]:
        """The training metrics stored since the last log, averaged over ranks (a checkpoint carries them)."""
        stored = self._stored["train"]
        keys = sorted(stored)
        if not keys:
            return {}
        flat = torch.cat([torch.stack([t.to(self.args.device) for t in stored[k]]) for k in keys])
        flat = self.accelerator.reduce(flat, reduction="mean") if self.accelerator.num_processes > 1 else flat
        values, out = flat.tolist(), {}
        for k in keys:
            out[k], values = values[: len(stored[k])], values[len(stored[k]) :]
        return out

    def reopen_metrics(self, values: dict[str, list[float]]) -> None:
        for k, saved in values.items():
            self._stored["train"][k][:0] = [torch.tensor(v, dtype=torch.float32) for v in saved]

    def _check_finite(self, loss: Tensor) -> None:
        if not torch.isfinite(loss.detach()):
            step = self.state.global_step + 1
            where = last_good_state(self.args.output_dir)
            raise TrainingDiverged(f"non-finite loss ({loss.item()}) at step {step}; {where}")

    # ---- Trainer hooks --------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        ref, ref_shared = self.reference(model, inputs)
        res: ObjectiveOutput = self.objective(
            model, inputs, ref, sam=mode == "train", sharded=self.sharded, ref_shared=ref_shared
        )
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
            ref, ref_shared = self.reference(model, inputs)  # once: the reference does not move with θ
        passes: list[ObjectiveOutput] = []

        def closure() -> Tensor:
            # The clean pass must not trigger DDP's gradient all-reduce (it never reaches .grad).
            first = not passes
            ctx = self.accelerator.no_sync(model) if first and self.accelerator.num_processes > 1 else nullcontext()
            with ctx, self.compute_loss_context_manager():
                passes.append(
                    self.objective(model, inputs, ref, sam=False, sharded=self.sharded, ref_shared=ref_shared)
                )
            if first:
                self._check_finite(passes[0].loss)
            return passes[-1].loss

        res = full_sam_backward(
            model.parameters(), closure, rho=self.sam.rho, backward=lambda loss: self.accelerator.backward(loss / gas)
        )
        self._store("train", passes[0].metrics)  # the clean pass, as in logits-SAM mode
        self._store("train", res.metrics)
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
        if mode == "train" and "sam/loss_pre" in logs:
            # `loss` is the clean loss at W for every mode (a SAM step returns the loss at W + ε for its
            # backward, which Trainer would log): runs with and without SAM compare like with like.
            # The perturbed loss stays under sam/loss_post.
            logs["loss"] = logs["sam/loss_pre"]
            if logs.get("sam/grad_norm") is not None and logs["sam/loss_pre"]:
                # ρ‖g‖/L: SAM's first-order loss increase as a fraction of the loss, the scale ρ should be chosen by
                rho_g = logs.get("sam/eps_norm", 0.0) * logs["sam/grad_norm"]
                logs["sam/rho_g_over_loss"] = round(rho_g / abs(logs["sam/loss_pre"]), 6)
        super().log(logs, start_time)


def _checked_sam(sam: SamConfig | dict[str, Any] | None) -> SamConfig:
    """A SamConfig checked as the CLI checks ``sam.*`` (None: no SAM; a dict: its fields)."""
    if sam is None:
        return SamConfig()
    if isinstance(sam, dict):
        unknown = sorted(set(sam) - {f.name for f in dataclasses.fields(SamConfig)})
        if unknown:
            raise ValueError(f"sam: unknown key {unknown[0]!r} (SamConfig fields: rho, mode, method, adaptive)")
        sam = SamConfig(**sam)
    if not isinstance(sam, SamConfig):
        raise TypeError(f"sam must be a logitsam.config.SamConfig, a dict or None, got {type(sam).__name__}")
    check_rho(sam.rho)
    check_method(sam.method)
    if sam.mode not in ("logits", "full"):
        raise ValueError(f"sam.mode: {sam.mode!r} is not one of logits, full")
    if not isinstance(sam.adaptive, bool):
        raise ValueError(f"sam.adaptive: {sam.adaptive!r} is not a bool")
    return sam


def last_good_state(output_dir: str) -> str:
    """Which saved state to resume from after a divergence: the newest checkpoint whose weights are finite."""
    found = list_checkpoints(output_dir)
    for path in found:
        step = int(path.rsplit("-", 1)[1])
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
    return (
        f"no checkpoint was saved in {output_dir} before this step: nothing to resume; start again with "
        "--train.overwrite_output_dir=true (and a lower learning rate or sam.rho)"
    )
