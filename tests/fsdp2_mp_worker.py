"""Worker for test_distributed's FSDP2 mixed-precision test: ``fully_shard`` with
``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` (what 7B users run), gloo on CPU.

float32 shards, bf16 unsharded parameters: the body and the head compute in bf16. Each rank scores its own
batch; per variant (plain and logits-SAM, fused and full-logits path) one forward + backward, then every
parameter's full gradient (``full_tensor``) is read and cleared. Writes ``out/rank<r>.json``: per variant the
loss (mean over ranks), the path, the dtype the head ran in, and the largest relative gradient difference
against the full-logits path of the same step (plain: ``logits``, SAM: ``logits_sam``, by gram).

    torchrun --nproc_per_node 2 tests/fsdp2_mp_worker.py OUT
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from logitsam.core.objective import Objective
from logitsam.core.registry import get_loss
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


def batch(seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (2 * PAIRS, T), generator=g)
    ids[PAIRS:, :5] = ids[:PAIRS, :5]
    labels = ids.clone()
    labels[:, :5] = -100
    ref = -torch.rand(2 * PAIRS, generator=g) * 5 - 60
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}, ref


def main() -> None:
    out_dir = sys.argv[1]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = tiny_model(V, seed=0)
    model.lm_head.weight.data *= 20  # logits of size ~1 so the loss and its gradient are not flat
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp, reshard_after_forward=True)  # the sweep gathers the head itself
    dtypes: list[torch.dtype] = []
    model.lm_head.register_forward_pre_hook(lambda m, a: dtypes.append(m.weight.dtype))
    b, ref = batch(rank)
    rec: dict = {}
    grads: dict[str, dict[str, torch.Tensor]] = {}
    for name, (fused, rho, method) in VARIANTS.items():
        obj = Objective(get_loss("dpo"), {"beta": 0.1}, rho=rho, method=method, fused=fused)
        res = obj(model, b, ref, sam=True, sharded=True)
        res.loss.backward()
        grads[name] = {
            k: (p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad).float().clone()
            for k, p in model.named_parameters()
        }
        model.zero_grad(set_to_none=True)
        loss = res.loss.detach().float().clone()
        dist.all_reduce(loss)
        rec[name] = {"loss": loss.item() / world, "path": res.path, "head_dtype": str(dtypes[-1])}
    for name in rec:
        base = "logits_sam" if "sam" in name else "logits"
        rec[name]["rel_vs_logits"] = max(
            ((grads[name][k] - grads[base][k]).norm() / grads[base][k].norm().clamp(min=1e-30)).item()
            for k in grads[name]
        )
        rec[name]["head_grad_norm"] = grads[name]["lm_head.weight"].norm().item()
        rec[name]["grad_dtype"] = str(model.lm_head.weight.dtype)  # the sharded parameter (and its gradient)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(rec, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
