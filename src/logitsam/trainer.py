"""PreferenceTrainer: transformers.Trainer with a preference loss, logits-SAM and squeeze metrics.

One code path for CPU, one GPU, DDP, FSDP and ZeRO-3: the wrapped model's own forward returns the
logits and the last hidden state (the head's input), and logits-SAM adds its perturbation in logit
space. Under FSDP / ZeRO-3 the ``gram`` method is forced, so the sharded head weight is never
gathered. The loss comes from the registry; nothing here matches on loss names.

Perturbation scope: ε is computed per micro-batch from that micro-batch's gradient, on each rank
separately (DDP ranks do not all-reduce the head gradient before perturbing; like SAM's
m-sharpness). With gradient accumulation every micro-batch gets its own ε.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ProgressCallback

from .config import SamConfig
from .diagnostics.squeeze import preference_metrics, top_token_prob
from .logprobs import model_sequence_logps, sequence_logps, shift_for_causal_lm, token_logps
from .losses import LossOutput, LossSpec, PreferenceLogps
from .sam import logits_sam_loss
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


class QuietProgress(ProgressCallback):
    """Progress bars without printing every log record under them."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        return None


class PreferenceTrainer(Trainer):
    """Trainer for any registered preference loss, with logits-SAM or full SAM.

    loss_spec / loss_params: from :mod:`logitsam.losses`. sam: rho, mode (logits | full), method.
    ref_model: frozen reference (None: precomputed ``ref_logps`` in the batch, or the policy with
    its LoRA adapters disabled, or no reference for reference-free losses).
    """

    def __init__(
        self,
        *args: Any,
        loss_spec: LossSpec,
        loss_params: dict[str, Any],
        sam: SamConfig,
        ref_model: Any = None,
        print_logs: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.loss_spec, self.loss_params, self.sam = loss_spec, loss_params, sam
        self.model_accepts_loss_kwargs = False  # our loss is a per-micro-batch mean: scale by GA steps
        self._stored: dict[str, dict[str, list[Tensor]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self.add_callback(JsonlMetrics())
        if not print_logs:
            self.remove_callback(ProgressCallback)
            self.add_callback(QuietProgress())
        self.sharded = self.is_fsdp_enabled or (
            self.is_deepspeed_enabled and getattr(self.accelerator.state.deepspeed_plugin, "zero_stage", 0) == 3
        )
        self.ref_model = ref_model
        if ref_model is not None:
            if self.is_deepspeed_enabled or self.is_fsdp_enabled:
                self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
            else:
                self.ref_model = ref_model.to(self.args.device)

    # ---- forward pieces -------------------------------------------------------------------
    def _forward(self, model: Any, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            output_hidden_states=True,
            use_cache=False,
        )
        return out.hidden_states[-1], out.logits

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

    def _head(self, model: Any) -> tuple[Tensor | None, Tensor | None]:
        if self.sharded:
            return None, None  # never gather a sharded head: gram works from logits alone
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        return head.weight, getattr(head, "bias", None)

    def _loss_fn(self, batch: dict[str, Tensor], labels: Tensor, ref: Tensor | None):
        n = labels.shape[0] // 2
        scores = (batch.get("score_chosen"), batch.get("score_rejected"))

        def fn(logits: Tensor) -> tuple[Tensor, tuple[LossOutput, Tensor, Tensor]]:
            sums, lengths = sequence_logps(token_logps(logits, labels), labels)
            inp = PreferenceLogps(
                sums[:n],
                sums[n:],
                lengths[:n],
                lengths[n:],
                None if ref is None else ref[:n],
                None if ref is None else ref[n:],
                *scores,
            )
            out = self.loss_spec.fn(inp, **self.loss_params)
            return out.losses.mean(), (out, sums.detach(), lengths)

        return fn

    # ---- Trainer hooks --------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        labels = shift_for_causal_lm(inputs["labels"])
        ref = self.reference_logps(model, inputs)
        hidden, logits = self._forward(model, inputs)
        loss_fn = self._loss_fn(inputs, labels, ref)
        metrics: dict[str, Tensor] = {}
        if self.sam.rho != 0 and self.sam.mode == "logits" and mode == "train":
            weight, bias = self._head(model)
            method = "gram" if self.sharded else self.sam.method
            res = logits_sam_loss(loss_fn, hidden, weight, bias, rho=self.sam.rho, method=method, logits=logits)
            loss, (out, sums, _) = res.loss, res.aux_pre
            metrics.update({k: torch.tensor(v) for k, v in res.metrics.items()})
        else:
            loss, (out, sums, _) = loss_fn(logits)
        if not torch.isfinite(loss.detach()):
            raise TrainingDiverged(
                f"non-finite loss ({loss.item()}) at step {self.state.global_step + 1}; "
                f"the last saved checkpoint in {self.args.output_dir} is the last good state"
            )
        n = labels.shape[0] // 2
        metrics.update(
            preference_metrics(out, sums[:n], sums[n:], *((None, None) if ref is None else (ref[:n], ref[n:])))
        )
        metrics["probs/top_token"] = top_token_prob(logits.detach(), labels)
        for k, v in metrics.items():
            self._stored[mode][k].append(v.detach().float().cpu())
        return (loss, {"logits": logits}) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not (self.sam.mode == "full" and self.sam.rho != 0):
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        inputs = self._prepare_inputs(inputs)
        gas = self.current_gradient_accumulation_steps
        first = True

        def closure() -> Tensor:
            nonlocal first
            # The clean pass must not trigger DDP's gradient all-reduce (it never reaches .grad).
            ctx = self.accelerator.no_sync(model) if first and self.accelerator.num_processes > 1 else nullcontext()
            first = False
            with ctx, self.compute_loss_context_manager():
                return self.compute_loss(model, inputs)

        res = full_sam_backward(
            model.parameters(), closure, rho=self.sam.rho, backward=lambda loss: self.accelerator.backward(loss / gas)
        )
        for k, v in res.metrics.items():
            self._stored["train"][k].append(torch.tensor(v))
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
            means = torch.stack([torch.stack(stored[k]).mean() for k in keys]).to(self.args.device)
            means = self.accelerator.reduce(means, reduction="mean") if self.accelerator.num_processes > 1 else means
            logs.update({prefix + k: round(float(v), 6) for k, v in zip(keys, means, strict=True)})
            stored.clear()
        super().log(logs, start_time)
