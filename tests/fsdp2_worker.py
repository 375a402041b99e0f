"""Worker for test_distributed's FSDP2 test: the objective on a ``fully_shard``-ed tiny Llama (gloo, CPU).

accelerate does not shard on CPU (it runs MULTI_CPU, i.e. DDP, whatever its FSDP config says), so this
applies torch's ``fully_shard`` directly: each decoder layer, then the root (which holds the head).
Each rank trains on its own batch; an unsharded copy of the model on every rank trains on both
ranks' batches with the mean of their losses (what DDP computes). Writes ``out/rank<r>.json``:
losses of both, the objective's path, whether the head was a shard when the fused sweep began, and the
largest relative difference of every trained parameter against the copy.

    torchrun --nproc_per_node 2 tests/fsdp2_worker.py OUT RHO {auto|explicit} [METHOD]
"""

import contextlib
import copy
import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from logitsam.core import objective as objective_mod
from logitsam.core.objective import Objective
from logitsam.core.registry import get_loss
from logitsam.models import tiny_model

V, T, PAIRS, STEPS = 259, 14, 2, 3
SHARDED_AT_SWEEP: list[bool] = []  # was the head a shard when the fused sweep asked for it (after forward)?


def _spying(full_head):
    @contextlib.contextmanager
    def spy(model):
        SHARDED_AT_SWEEP.append(isinstance(model.lm_head.weight, DTensor))
        with full_head(model) as head:
            yield head

    return spy


def batch(seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """PAIRS pairs (chosen rows, then rejected) with a 5-token prompt, and reference sums."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (2 * PAIRS, T), generator=g)
    ids[PAIRS:, :5] = ids[:PAIRS, :5]  # a pair shares its prompt
    labels = ids.clone()
    labels[:, :5] = -100
    ref = -torch.rand(2 * PAIRS, generator=g, dtype=torch.float32) * 5 - 60
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}, ref


def main() -> None:
    out, rho, reshard = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    method = sys.argv[4] if len(sys.argv) > 4 else "auto"
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = tiny_model(V, seed=0)
    plain = copy.deepcopy(model)
    for layer in model.model.layers:
        fully_shard(layer)
    # "explicit": the root reshards after forward too, so the objective must gather the head itself
    fully_shard(model, reshard_after_forward=True if reshard == "explicit" else None)
    obj = Objective(get_loss("dpo"), {"beta": 0.1}, rho=rho, method=method)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    opt_plain = torch.optim.SGD(plain.parameters(), lr=0.5)
    rec: dict = {"losses": [], "plain_losses": [], "paths": []}
    objective_mod.full_head = _spying(objective_mod.full_head)
    for step in range(STEPS):
        batches = [batch(1000 * step + r) for r in range(world)]
        b, ref = batches[rank]
        res = obj(model, b, ref, sam=True, sharded=True)
        rec.setdefault("head_sharded_at_sweep", []).append(SHARDED_AT_SWEEP[-1])
        res.loss.backward()
        opt.step()
        opt.zero_grad()
        loss = res.loss.detach().clone()
        dist.all_reduce(loss)
        rec["losses"].append(loss.item() / world)
        rec["paths"].append(res.path)
        plain_loss = sum(obj(plain, bb, rr, sam=True).loss for bb, rr in batches) / world
        plain_loss.backward()
        opt_plain.step()
        opt_plain.zero_grad()
        rec["plain_losses"].append(plain_loss.item())
    diffs, moved = {}, {}
    start = tiny_model(V, seed=0).state_dict()
    for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
        full = p.full_tensor() if isinstance(p, DTensor) else p
        diffs[name] = ((full - q).norm() / q.norm()).item()
        moved[name] = ((q - start[name]).norm() / start[name].norm()).item()
    rec["rel_diff"], rec["moved"] = diffs, moved
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(rec, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
