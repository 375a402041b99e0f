"""Batched generation with per-dataset decoding settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm


@dataclass(frozen=True)
class DecodeSettings:
    """Decoding for one data set (the DPO paper samples at temperature 1.0 for sentiment, 0.0–1.0 elsewhere)."""

    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    do_sample: bool = True
    repetition_penalty: float = 1.0


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    settings: DecodeSettings = DecodeSettings(),
    *,
    batch_size: int = 16,
    seed: int = 0,
    chat: bool = False,
    desc: str = "generating",
    return_ids: bool = False,
) -> list[str] | tuple[list[str], list[tuple[list[int], list[int]]]]:
    """Completions of ``prompts`` (text only, prompt and special tokens removed), in order.

    chat: wrap each prompt as a user turn with the tokenizer's chat template.
    Batches are left-padded; sampling is seeded per call so runs are reproducible.
    return_ids: also return (prompt ids, generated ids up to and including EOS) per prompt, so
    log-probs can be scored on exactly the sampled tokens (text does not always re-tokenize the same).
    """
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    out: list[str] = []
    ids_out: list[tuple[list[int], list[int]]] = []
    gen = torch.Generator(device="cpu").manual_seed(seed)
    try:
        for s in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False, disable=None):  # no bar on a non-TTY
            chunk = prompts[s : s + batch_size]
            if chat:
                chunk = [
                    tokenizer.apply_chat_template(
                        [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
                    )
                    for p in chunk
                ]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=not chat).to(device)
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            # use_cache: training turns the model's KV cache off (config.use_cache = False); without it every
            # new token re-runs the whole prefix (~5x slower at 32 new tokens)
            kwargs: dict[str, Any] = dict(
                max_new_tokens=settings.max_new_tokens, pad_token_id=tokenizer.pad_token_id, use_cache=True
            )
            if settings.do_sample and settings.temperature > 0:
                kwargs.update(
                    do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k
                )
            else:
                kwargs.update(do_sample=False)
            if settings.repetition_penalty != 1.0:
                kwargs["repetition_penalty"] = settings.repetition_penalty
            ids = model.generate(**enc, **kwargs)
            new = ids[:, enc["input_ids"].shape[1] :]
            out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
            for row, mask, gen_row in zip(enc["input_ids"], enc["attention_mask"], new.tolist(), strict=True):
                eos = tokenizer.eos_token_id
                cut = gen_row.index(eos) + 1 if eos in gen_row else len(gen_row)
                ids_out.append((row[mask.bool()].tolist(), gen_row[:cut]))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return (out, ids_out) if return_ids else out
