"""Overhead of logits-SAM over a plain step: head forward + DPO loss + backward.

For each shape (N tokens, N_r scored, d, V) it times plain / weight / gram / chunked / auto
side by side (interleaved rounds, median) and each method's peak tensor memory (inputs included,
counted by benchmarks/memtrack.py on any device). It prints ratios to plain and writes JSON.

    python benchmarks/sam_overhead.py [--quick] [--rounds 3] [--out FILE] [--device cpu|cuda] [--dtype ...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from logitsam.core.logprobs import IGNORE_INDEX, sequence_logps, token_logps
from logitsam.core.losses import PreferenceLogps
from logitsam.core.registry import compute_loss
from logitsam.sam.logits import logits_sam_loss, method_costs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from memtrack import PeakMemory

METHODS = ["plain", "weight", "gram", "chunked", "auto"]


@dataclass(frozen=True)
class Shape:
    name: str
    seqs: int  # sequences (chosen/rejected interleaved); N = seqs · seq_len
    seq_len: int
    scored: int  # response tokens per sequence; N_r = seqs · scored
    d: int
    v: int


FULL = [
    Shape("pythia-2.8b head, N=256", 4, 64, 32, 2560, 50304),
    Shape("pythia-2.8b head, N=1024", 8, 128, 64, 2560, 50304),
    Shape("mistral-7b head, N=256", 4, 64, 32, 4096, 32000),
    Shape("mistral-7b head, N=1024", 8, 128, 64, 4096, 32000),
    Shape("N_r > d (d=256, V=8192)", 8, 256, 192, 256, 8192),
]
QUICK = [Shape("tiny N_r<d", 4, 16, 8, 64, 512), Shape("tiny N_r>d", 4, 32, 24, 16, 256)]


def make_inputs(s: Shape, device: str, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(s.seqs, s.seq_len, s.d, generator=g).to(device, dtype).requires_grad_()
    weight = torch.randn(s.v, s.d, generator=g).mul_(0.02).to(device, dtype).requires_grad_()
    labels = torch.randint(0, s.v, (s.seqs, s.seq_len), generator=g)
    labels[:, : s.seq_len - s.scored] = IGNORE_INDEX  # prompt rows carry no loss
    return hidden, weight, labels.to(device)


def dpo_from_logits(labels: torch.Tensor):
    """Logits (B, T, V) -> mean DPO loss, chosen = even sequences, rejected = odd."""

    def fn(z: torch.Tensor) -> torch.Tensor:
        sums, lengths = sequence_logps(token_logps(z, labels), labels)
        ref = sums.detach() - 0.5
        inp = PreferenceLogps(sums[0::2], sums[1::2], lengths[0::2], lengths[1::2], ref[0::2], ref[1::2])
        return compute_loss("dpo", inp).losses.mean()

    return fn


def step(method: str, hidden, weight, labels, rho: float) -> None:
    loss_fn = dpo_from_logits(labels)
    if method == "plain":
        loss = loss_fn(F.linear(hidden, weight))
    else:
        loss = logits_sam_loss(loss_fn, hidden, weight, rho=rho, method=method, block=4096).loss
    loss.backward()
    hidden.grad = weight.grad = None


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure_memory(s: Shape, method: str, device: str, dtype: torch.dtype, rho: float) -> float:
    """Peak tensor bytes of one step, its inputs (hidden, weight, labels) included."""
    hidden, weight, labels = make_inputs(s, device, dtype)
    inputs = sum(t.untyped_storage().nbytes() for t in (hidden, weight, labels))
    with PeakMemory() as pm:
        step(method, hidden, weight, labels, rho)
    return float(inputs + pm.peak)


def time_methods(s: Shape, args, dtype: torch.dtype) -> dict[str, float]:
    hidden, weight, labels = make_inputs(s, args.device, dtype)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for m in METHODS:  # warm-up
        step(m, hidden, weight, labels, args.rho)
    order = list(METHODS)
    for _ in range(args.rounds):
        random.shuffle(order)  # interleave so drift and noise hit every method alike
        for m in order:
            _sync(args.device)
            t0 = time.perf_counter()
            step(m, hidden, weight, labels, args.rho)
            _sync(args.device)
            times[m].append(time.perf_counter() - t0)
    return {m: statistics.median(v) for m, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny shapes (smoke run)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rho", type=float, default=1e-4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--out", default="benchmarks/results/sam_overhead.json")
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    random.seed(0)
    rows = []
    header = f"{'shape':28s} {'N':>5s} {'N_r':>5s} {'method':8s} {'ms':>9s} {'t/plain':>8s} {'mem/plain':>9s}"
    print(f"device={args.device} dtype={args.dtype} threads={torch.get_num_threads()} rho={args.rho}")
    print(header)
    for s in QUICK if args.quick else FULL:
        n, n_r = s.seqs * s.seq_len, s.seqs * s.scored
        times = time_methods(s, args, dtype)
        mem = {m: measure_memory(s, m, args.device, dtype, args.rho) for m in METHODS}
        auto = min(("weight", "gram", "chunked"), key=lambda m: method_costs(n, n_r, s.d, s.v)[m].flops)
        for m in METHODS:
            row = dict(shape=s.name, n=n, n_r=n_r, d=s.d, v=s.v, method=m, seconds=times[m])
            row.update(time_ratio=times[m] / times["plain"], peak_bytes=mem[m], mem_ratio=mem[m] / mem["plain"])
            rows.append(row)
            label = f"{m} ({auto})" if m == "auto" else m
            print(
                f"{s.name:28s} {n:5d} {n_r:5d} {label:16s} {1e3 * times[m]:9.1f} "
                f"{row['time_ratio']:8.3f} {row['mem_ratio']:9.3f}"
            )
        extra = {m: times[m] - times["plain"] for m in ("weight", "gram", "chunked", "auto")}
        ratio = extra["gram"] / extra["weight"] if extra["weight"] > 0 else float("nan")
        best = min(times["gram"], times["weight"], times["chunked"])
        print(
            f"{'':28s} extra time gram/weight = {ratio:.3f}; (auto − best)/plain = "
            f"{(times['auto'] - best) / times['plain']:+.3f}"
        )
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"device": args.device, "dtype": args.dtype, "rho": args.rho, "rows": rows}, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
