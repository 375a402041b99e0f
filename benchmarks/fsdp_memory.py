"""Per-rank activation peak of one DPO step under FSDP2: fused head vs full logits, plain vs logits-SAM.

Llama-shaped (width 256, 2 layers, V = 128,256, untied), each decoder layer and the root
``fully_shard``-ed (the root reshards after forward, so the fused path gathers the head itself),
2 pairs × 512 tokens per rank, gloo. Peak tensor bytes of forward + backward beyond what was live
before (benchmarks/memtrack.py: exact, device-independent), per rank, with ratios printed side by
side, and the losses of each variant (fused and full-logits losses must agree).

    python -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/fsdp_memory.py [--device cuda]

On a GPU (``--device cuda``, one process is enough: FSDP2 over one rank still shards the module
tree into units and gathers them) ``torch.cuda.max_memory_allocated`` is used instead, in bf16
weights, or fp32 weights under bf16 autocast with ``--autocast``. ``--mp bf16``: FSDP2's
``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` over fp32 shards (what 7B recipes run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(__file__))
from logitsam.core.objective import Objective
from logitsam.core.registry import get_loss
from memtrack import PeakMemory

VARIANTS = {  # name: (fused, rho, method)
    "logits": (False, 0.0, "auto"),
    "fused": (True, 0.0, "auto"),
    "logits_sam_gram": (False, 1e-3, "gram"),
    "fused_sam_auto": (True, 1e-3, "auto"),
    "fused_sam_chunked": (True, 1e-3, "chunked"),
}


def model_and_batch(args, rank: int, dev: torch.device):
    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(dev, torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    mp = MixedPrecisionPolicy()  # FSDP2's default: parameters compute in their own dtype
    if args.mp == "bf16":  # float32 shards, bf16 unsharded parameters, gradients reduced in float32 (7B recipes)
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, reshard_after_forward=True, mp_policy=mp)
    g = torch.Generator().manual_seed(rank)
    ids = torch.randint(0, args.vocab, (2 * args.pairs, args.seq), generator=g)
    labels = ids.clone()
    labels[:, : args.seq // 4] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    batch = {k: v.to(dev) for k, v in batch.items()}
    ref = torch.full((2 * args.pairs,), -3.0 * args.seq, device=dev)
    return model, batch, ref


def peak(dev: torch.device, fn) -> int:
    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with PeakMemory() as pm:
        fn()
    return pm.peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--autocast", action="store_true", help="fp32 weights, bf16 autocast for the step")
    ap.add_argument("--mp", default="none", choices=["none", "bf16"], help="FSDP2 MixedPrecisionPolicy param_dtype")
    ap.add_argument("--out", default="fsdp_memory.json")
    args = ap.parse_args()
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    rank = dist.get_rank()
    dev = torch.device("cpu")
    if args.device == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(dev)
    model, batch, ref = model_and_batch(args, rank, dev)
    res: dict[str, dict[str, float]] = {}
    for name, (fused, rho, method) in VARIANTS.items():
        obj = Objective(get_loss("dpo"), {"beta": 0.1}, rho=rho, method=method, fused=fused)
        out: dict[str, float] = {}

        def step(obj: Objective = obj, out: dict[str, float] = out) -> None:
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.autocast):
                r = obj(model, batch, ref, sam=True, sharded=True)
            r.loss.backward()
            out["loss"], out["path"] = r.loss.item(), r.path  # type: ignore[assignment]

        step()  # warm-up (FSDP lazy init, first-call head check)
        model.zero_grad(set_to_none=False)  # gradients stay allocated: they are not the activations
        out["bytes"] = peak(dev, step)
        model.zero_grad(set_to_none=False)
        res[name] = out
    if rank == 0:
        mib = 2**20
        print(f"FSDP2, {dist.get_world_size()} ranks on {dev.type}, V={args.vocab}, {args.pairs} pairs × {args.seq} "
              f"tokens per rank, weights {args.dtype}{' + bf16 autocast' if args.autocast else ''}"
              f"{' + MixedPrecisionPolicy(param_dtype=bf16)' if args.mp == 'bf16' else ''}")  # fmt: skip
        print(f"{'variant':18} {'path':7} {'peak MiB':>10} {'× logits':>9} {'× plain':>8} {'loss':>9}")
        for name, r in res.items():
            plain = res["fused" if name.startswith("fused") else "logits"]["bytes"]
            print(f"{name:18} {r['path']:7} {r['bytes'] / mib:10.1f} {r['bytes'] / res['logits']['bytes']:9.3f} "
                  f"{r['bytes'] / plain:8.3f} {r['loss']:9.5f}")  # fmt: skip
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "rank0": res}, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
