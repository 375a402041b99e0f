"""One DPO training step (loss + backward, reference forward included): TRL vs ours, and logits-SAM vs plain.

All three run on the same model weights and the same token batch, interleaved, median of rounds:
  trl      TRL DPOTrainer.compute_loss (sigmoid) + backward
  plain    PreferenceTrainer.compute_loss (dpo, ρ = 0) + backward
  sam      PreferenceTrainer.compute_loss (dpo, ρ = 1e-4, method auto) + backward

    python benchmarks/trainer_step.py [--shape smollm2|tiny] [--batch 4] [--seq 128] [--rounds 3]
``smollm2`` is a randomly initialised Llama with SmolLM2-135M's shape (d=576, 30 layers, V=49152).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import random
import statistics
import time

import datasets
import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

from logitsam.config import SamConfig
from logitsam.logprobs import IGNORE_INDEX
from logitsam.losses import get_loss, resolve_hparams
from logitsam.models import tiny_tokenizer
from logitsam.trainer import PreferenceTrainer

SHAPES = {
    "smollm2": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=4096,
        tie_word_embeddings=False,
    ),
}


def make_rows(n: int, seq: int, vocab: int, seed: int = 0) -> list[dict]:
    g = random.Random(seed)
    rows = []
    for _ in range(n):
        p = seq // 2
        rows.append(
            {
                "prompt_ids": [g.randrange(300, vocab) for _ in range(p)],
                "chosen_ids": [g.randrange(300, vocab) for _ in range(seq - p)],
                "rejected_ids": [g.randrange(300, vocab) for _ in range(seq - p)],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="smollm2", choices=list(SHAPES))
    ap.add_argument("--batch", type=int, default=4, help="preference pairs per step")
    ap.add_argument("--seq", type=int, default=128, help="tokens per sequence (half prompt, half response)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/trainer_step.json")
    args = ap.parse_args(argv)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import trl

    torch.manual_seed(0)
    cfg = LlamaConfig(**SHAPES[args.shape], max_position_embeddings=2 * args.seq)
    base = LlamaForCausalLM(cfg)
    tok = tiny_tokenizer()
    tok.pad_token = tok.eos_token
    rows = make_rows(args.batch, args.seq, cfg.vocab_size)

    # TRL: its own collator on the same token ids.
    trl_cfg = trl.DPOConfig(
        output_dir="/tmp/logitsam-bench-trl",
        per_device_train_batch_size=args.batch,
        use_cpu=True,
        report_to=[],
        loss_type=["sigmoid"],
        beta=0.1,
        max_length=None,
    )
    ds = datasets.Dataset.from_list([{"prompt": "x", "chosen": "y", "rejected": "z"}] * args.batch)
    trl_trainer = trl.DPOTrainer(
        model=copy.deepcopy(base), ref_model=copy.deepcopy(base), args=trl_cfg, train_dataset=ds, processing_class=tok
    )
    trl_batch = trl_trainer.data_collator(rows)
    ours_batch = {
        "input_ids": trl_batch["input_ids"],
        "attention_mask": trl_batch["attention_mask"],
        "labels": trl_batch["input_ids"].masked_fill(trl_batch["completion_mask"] == 0, IGNORE_INDEX),
    }

    spec = get_loss("dpo")
    targs = TrainingArguments(output_dir="/tmp/logitsam-bench", use_cpu=True, report_to=[], remove_unused_columns=False)
    trainers = {}
    for name, rho in (("plain", 0.0), ("sam", 1e-4)):
        trainers[name] = PreferenceTrainer(
            model=copy.deepcopy(base),
            args=targs,
            loss_spec=spec,
            loss_params=resolve_hparams(spec, {}),
            sam=SamConfig(rho=rho),
            ref_model=copy.deepcopy(base).requires_grad_(False),
        )

    def step(name: str) -> None:
        tr, batch = (trl_trainer, trl_batch) if name == "trl" else (trainers[name], ours_batch)
        tr.model.train()
        tr.model.zero_grad(set_to_none=True)
        tr.compute_loss(tr.model, batch).backward()

    names = ["trl", "plain", "sam"]
    for n in names:
        step(n)  # warm-up
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        random.shuffle(names)
        for n in names:
            t0 = time.perf_counter()
            step(n)
            times[n].append(time.perf_counter() - t0)
    med = {n: statistics.median(v) for n, v in times.items()}
    print(f"shape={args.shape} pairs={args.batch} seq={args.seq} threads={torch.get_num_threads()}")
    for n in ("trl", "plain", "sam"):
        print(f"  {n:6s} {med[n]:8.3f} s/step")
    print(f"  ours(plain)/TRL = {med['plain'] / med['trl']:.3f}   logits-SAM/plain = {med['sam'] / med['plain']:.3f}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(
            {
                "args": vars(args),
                "seconds": med,
                "ours_over_trl": med["plain"] / med["trl"],
                "sam_over_plain": med["sam"] / med["plain"],
            },
            f,
            indent=1,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
