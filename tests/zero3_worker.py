"""Worker for test_zero3: the objective on a DeepSpeed ZeRO-3 engine of a tiny Llama (gloo, CPU, 2 ranks).

The model is built under ``deepspeed.zero.Init`` (partitioned from the start) and an unsharded copy of the
same weights kept on every rank. Each rank scores its own batch; for every variant (fused or full-logits
path, plain or logits-SAM, and the fused head's recomputing backward) the engine's backward runs and the
full gradient of every parameter is read back (``safe_get_full_grad``), then an optimizer step at lr = 0
clears it. The unsharded copy computes the mean of both ranks' losses (what ZeRO-3's averaged gradient
is the gradient of). Writes ``out/rank<r>.json``: per variant the loss, the objective's path, whether the
head was partitioned when the sweep began, and the largest relative gradient difference against the
full-logits path on the sharded engine and against the unsharded copy.

    torchrun --nproc_per_node 2 tests/zero3_worker.py OUT {released|defaults} {untied|tied}
"""

import contextlib
import copy
import json
import os
import sys

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.utils import safe_get_full_grad
from transformers import LlamaForCausalLM

from logitsam.core import objective as objective_mod
from logitsam.core.forward import full_head, land_grad, regather, zero3_param
from logitsam.core.logprobs import IGNORE_INDEX, shift_for_causal_lm
from logitsam.core.objective import Objective
from logitsam.core.registry import get_loss
from logitsam.fused import FusedJob, fused_sequence_sums, plan_rows
from logitsam.models import tiny_model

V, T, PAIRS = 259, 14, 2
VARIANTS = {  # name: (fused, rho, method)
    "logits": (False, 0.0, "auto"),
    "fused": (True, 0.0, "auto"),
    "logits_sam": (False, 1e-2, "gram"),
    "fused_sam_weight": (True, 1e-2, "weight"),
    "fused_sam_gram": (True, 1e-2, "gram"),
    "fused_sam_chunked": (True, 1e-2, "chunked"),
}
PARTITIONED_AT_SWEEP: list[bool] = []


def _spying(inner):
    @contextlib.contextmanager
    def spy(model):
        w = model.module.lm_head.weight if hasattr(model, "module") else model.lm_head.weight
        PARTITIONED_AT_SWEEP.append(zero3_param(w) and w.numel() == 0)
        with inner(model) as head:
            yield head

    return spy


CONFIG = tiny_model(V).config  # read outside zero.Init


def build(tied: bool) -> LlamaForCausalLM:
    """tiny_model's Llama, tied or not; no padding row (zeroing it would index a partitioned weight)."""
    cfg = copy.deepcopy(CONFIG)
    cfg.tie_word_embeddings, cfg.pad_token_id = tied, None
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return LlamaForCausalLM(cfg)


def batch(seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (2 * PAIRS, T), generator=g)
    ids[PAIRS:, :5] = ids[:PAIRS, :5]
    labels = ids.clone()
    labels[:, :5] = -100
    ref = -torch.rand(2 * PAIRS, generator=g) * 5 - 60
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}, ref


def recompute_loss(model, b: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ sums² through the fused head: not the pair losses it predicted, so its backward recomputes."""
    labels = shift_for_causal_lm(b["labels"])
    out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True,
                logits_to_keep=1 if hasattr(model, "module") else 0)  # fmt: skip
    h = out.hidden_states[-1].reshape(-1, out.hidden_states[-1].shape[-1])
    with full_head(model) as head:
        plan = plan_rows(labels, 64, ignore_index=IGNORE_INDEX)
        losses = lambda p, c, r: 0.1 * (c - r)  # noqa: E731 - the prediction the backward must discard
        job = FusedJob(plan, PAIRS, losses, regather=regather(model), land_grad=land_grad(model))
        sums, _ = fused_sequence_sums(h[plan.rows], head.weight, head.bias, job)
    return (sums / 100).pow(2).mean()


def main() -> None:
    out_dir, mode, tying = sys.argv[1], sys.argv[2], sys.argv[3]
    deepspeed.init_distributed("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    # released: the head is partitioned after every use (no reuse window, no prefetch), so the sweep gathers it
    # and the backward gathers it again for its gradient; defaults: DeepSpeed may keep it gathered past the
    # forward (its reuse window), and the fused path uses it as it is
    zero = {"stage": 3, "stage3_param_persistence_threshold": 0, "stage3_max_reuse_distance": 0,
            "stage3_prefetch_bucket_size": 0} if mode == "released" else {"stage": 3}  # fmt: skip
    cfg = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "zero_optimization": zero,
           "optimizer": {"type": "AdamW", "params": {"lr": 0.0, "weight_decay": 0.0, "torch_adam": True}}}  # fmt: skip
    with deepspeed.zero.Init(config_dict_or_path=cfg):
        model = build(tying == "tied")
    params = dict(model.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values())):
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    plain = build(tying == "tied")  # the same weights, unsharded
    plain.load_state_dict(state)
    head_key = "lm_head.weight" if "lm_head.weight" in params else "model.embed_tokens.weight"
    engine, *_ = deepspeed.initialize(model=model, config=cfg, model_parameters=model.parameters())
    objective_mod.full_head = _spying(objective_mod.full_head)
    batches = [batch(r) for r in range(world)]
    b, ref = batches[rank]
    rec: dict = {}
    grads: dict[str, dict[str, torch.Tensor]] = {}
    for name, (fused, rho, method) in [*VARIANTS.items(), ("fused_recompute", (True, 0.0, "auto"))]:
        obj = Objective(get_loss("dpo"), {"beta": 0.1}, rho=rho, method=method, fused=fused)
        n_spy = len(PARTITIONED_AT_SWEEP)
        if name == "fused_recompute":
            loss, path = recompute_loss(engine, b), "fused"
        else:
            res = obj(engine, b, ref, sam=True, sharded=True)
            loss, path = res.loss, res.path
        engine.backward(loss)
        grads[name] = {k: safe_get_full_grad(p).clone() for k, p in params.items()}
        engine.step()  # lr 0: clears the gradients, leaves the weights
        released = params[head_key].numel() == 0  # nothing of ours left the head gathered
        total = loss.detach().clone()
        dist.all_reduce(total)
        if name == "fused_recompute":
            want = sum(recompute_loss(plain, bb) for bb, _ in batches) / world
        else:
            want = sum(obj(plain, bb, rr, sam=True).loss for bb, rr in batches) / world
        plain.zero_grad(set_to_none=True)
        want.backward()
        plain_params = dict(plain.named_parameters())

        def rel(a: dict[str, torch.Tensor], bb: dict[str, torch.Tensor]) -> float:
            return max(((a[k] - bb[k]).norm() / bb[k].norm().clamp(min=1e-30)).item() for k in a)

        rec[name] = {
            "loss": total.item() / world, "plain_loss": want.item(), "path": path,
            "partitioned_at_sweep": PARTITIONED_AT_SWEEP[n_spy:], "released_after_step": released,
            "rel_vs_unsharded": rel(grads[name], {k: plain_params[k].grad for k in grads[name]}),
            "head_grad_norm": grads[name][head_key].norm().item(),
        }  # fmt: skip
    for name in rec:
        base = "logits_sam" if "sam" in name else "logits"
        rec[name]["rel_vs_logits"] = max(
            ((grads[name][k] - grads[base][k]).norm() / grads[base][k].norm().clamp(min=1e-30)).item()
            for k in grads[name]
        )
    rec["landed"] = bool(getattr(params[head_key], "_logitsam_hooked", False))  # the backward gathered the head
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(rec, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
