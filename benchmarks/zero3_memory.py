"""Per-rank activation peak of one DPO step under DeepSpeed ZeRO-3: fused head vs full logits vs TRL.

Llama-shaped (width 256, 2 layers, V = 128,256, untied) built under ``deepspeed.zero.Init``, DeepSpeed's
default ZeRO-3 settings, 2 pairs × 512 tokens per rank, gloo on CPU. Peak tensor bytes of forward +
``engine.backward`` beyond what was live before (benchmarks/memtrack.py: exact, device-independent;
DeepSpeed's parameter gathers and gradient buckets are tensors too, so they count), per rank, after a
warm-up step per variant (DeepSpeed's first step, each head's first call); an optimizer step at lr 0
between steps clears the gradients. Variants:

  trl_logits         TRL-style full logits: the model's (S, T, V) logits, TRL's ``selective_log_softmax``
  trl_fused          TRL 1.16's own fused LM head (``add_fused_lm_head``, its ZeRO-3 gather)
  logits / fused     ours, full-logits path / fused head (the head gathered for the sweep only)
  logits_sam_gram    ours, full logits, logits-SAM by gram (the head never gathered)
  fused_sam_auto / fused_sam_chunked   ours, fused logits-SAM

Ratios to ``logits``, ``trl_logits`` and to the same path's plain step are printed side by side with the
losses (every variant's loss is the same DPO loss on the same batch: they must agree).

    python -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/zero3_memory.py \
        --out results/benchmarks/zero3_cpu_fp32_2ranks.json
    # one GPU (nccl, torch.cuda.max_memory_allocated):  ... --nproc_per_node 1 ... --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import deepspeed
import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.integrations import HfDeepSpeedConfig
from trl.trainer.utils import add_fused_lm_head, selective_log_softmax

sys.path.insert(0, os.path.dirname(__file__))
from fsdp_memory import peak
from logitsam.core.losses import PreferenceLogps, dpo
from logitsam.core.objective import Objective
from logitsam.core.registry import get_loss

VARIANTS = {  # name: (fused, rho, method); None: TRL's own computation
    "trl_logits": None,
    "trl_fused": None,
    "logits": (False, 0.0, "auto"),
    "fused": (True, 0.0, "auto"),
    "logits_sam_gram": (False, 1e-3, "gram"),
    "fused_sam_auto": (True, 1e-3, "auto"),
    "fused_sam_chunked": (True, 1e-3, "chunked"),
}


def trl_loss(engine, batch: dict[str, torch.Tensor], ref: torch.Tensor, fused: bool) -> torch.Tensor:
    """TRL's DPO sigmoid loss (β 0.1) from its per-token log-probs: full logits or its fused LM head."""
    labels = batch["labels"]
    kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    if fused:
        logps = engine(**kw, labels=labels, fused_lm_head=True).log_probs.sum(-1)
    else:
        logits = engine(**kw).logits[:, :-1]
        shifted = labels[:, 1:]
        mask = shifted != -100
        per_token = selective_log_softmax(logits, shifted.clamp(min=0))
        logps = (per_token * mask).sum(-1)
    b = labels.shape[0] // 2
    lengths = (labels[:, 1:] != -100).sum(-1)
    inp = PreferenceLogps(logps[:b], logps[b:], lengths[:b], lengths[b:], ref[:b], ref[b:])
    return dpo(inp, beta=0.1).losses.mean()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default="zero3_memory.json")
    args = ap.parse_args()
    deepspeed.init_distributed("nccl" if args.device == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dev = torch.device("cpu")
    if args.device == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(dev)
    cfg = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "zero_optimization": {"stage": 3},
           "bf16": {"enabled": args.dtype == "bf16"},
           "optimizer": {"type": "AdamW", "params": {"lr": 0.0, "weight_decay": 0.0, "torch_adam": True}}}  # fmt: skip
    hf_ds = HfDeepSpeedConfig(cfg)  # noqa: F841 - keeps transformers' ZeRO-3 flag on (TRL's gather reads it)
    mcfg = LlamaConfig(vocab_size=args.vocab, hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    with deepspeed.zero.Init(config_dict_or_path=cfg):
        model = LlamaForCausalLM(mcfg)
    add_fused_lm_head(model)  # `fused_lm_head=True` only: other calls run the original forward
    engine, *_ = deepspeed.initialize(model=model, config=cfg, model_parameters=model.parameters())
    g = torch.Generator().manual_seed(rank)
    ids = torch.randint(0, args.vocab, (2 * args.pairs, args.seq), generator=g)
    labels = ids.clone()
    labels[:, : args.seq // 4] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    batch = {k: v.to(dev) for k, v in batch.items()}
    ref = torch.full((2 * args.pairs,), -3.0 * args.seq, device=dev)
    res: dict[str, dict] = {}
    for name in args.variants.split(","):
        spec = VARIANTS[name]
        out: dict = {}

        def step(name: str = name, spec=spec, out: dict = out) -> None:
            if spec is None:
                loss, path = trl_loss(engine, batch, ref, fused=name == "trl_fused"), name
            else:
                fused, rho, method = spec
                obj = Objective(get_loss("dpo"), {"beta": 0.1}, rho=rho, method=method, fused=fused)
                r = obj(engine, batch, ref, sam=True, sharded=True)
                loss, path = r.loss, r.path
            engine.backward(loss)
            out["loss"], out["path"] = loss.item(), path

        try:
            step()  # warm-up: DeepSpeed's first step and trace, each head's first call
            engine.step()
            out["bytes"] = peak(dev, step)
            engine.step()
        except Exception as e:  # a variant that cannot run is reported, not fatal
            out = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        res[name] = out
        if rank == 0:
            print(f"  [{name}: {out.get('bytes', 0) / 2**20:.1f} MiB {out.get('error', '')}]", flush=True)
    if rank == 0:
        mib = 2**20
        print(f"ZeRO-3, {world} ranks on {dev.type}, V={args.vocab}, {args.pairs} pairs × {args.seq} tokens per rank, "
              f"weights {args.dtype}")  # fmt: skip
        print(f"{'variant':18} {'path':10} {'peak MiB':>10} {'× logits':>9} {'× TRL':>7} {'× plain':>8} {'loss':>9}")
        ok = {n: r for n, r in res.items() if "bytes" in r}
        for name, r in res.items():
            if "bytes" not in r:
                print(f"{name:18} failed: {r['error']}")
                continue
            plain = ok.get("fused" if name.startswith("fused") else "logits", r)["bytes"]
            vs = [r["bytes"] / ok[k]["bytes"] if k in ok else float("nan") for k in ("logits", "trl_logits")]
            print(f"{name:18} {r['path']:10} {r['bytes'] / mib:10.1f} {vs[0]:9.3f} {vs[1]:7.3f} "
                  f"{r['bytes'] / plain:8.3f} {r['loss']:9.5f}")  # fmt: skip
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            meta = {"args": vars(args), "world": world, "deepspeed": deepspeed.__version__}
            json.dump({**meta, "rank0": res}, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
