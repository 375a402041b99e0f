"""Reference log-probs computed once and cached on disk, so the reference model leaves memory.

The cache key hashes the reference model's *content* (:func:`model_fingerprint`: class, config,
every tensor's name, shape and dtype, its float64 sum and an evenly strided sample of its values),
the model id string and every tokenized row. A different model saved at the same path, a changed
dtype, tokenizer, data file or length limit therefore never reuses stale values. Beside each
``<key>.pt`` (the plain (n, 2) tensor) a ``<key>.sha256`` holds the SHA-256 of the key and the
values' bytes, so a file replaced with other values — even of the right shape — is noticed. A cache
file that cannot be read (corrupt, truncated, not plain tensors — it is loaded with
``weights_only=True``), has the wrong shape, holds NaN/inf, or does not match its checksum (or has
none) is recomputed with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any

import torch
from tqdm.auto import tqdm

from logitsam.core.scoring import model_pair_logps_with_shared, model_sequence_logps
from logitsam.data.batching import PreferenceCollator
from logitsam.models import cache_dir

log = logging.getLogger(__name__)


@torch.no_grad()
def batch_reference_logps(
    seqs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    policy: Any,
    unwrapped: Any,
    ref_model: Any = None,
    *,
    adapters: Any = None,
    chunk_rows: int | None = None,
    shared: bool = False,
) -> Any:
    """(2B,) summed reference log-probs of a collated batch's (input_ids, attention_mask, labels); with
    ``shared`` (LD-DPO) a pair of them: the sums and the sums over each pair's shared prefix, one forward.

    The reference is ``ref_model`` when given, else the policy with its LoRA adapters off: ``adapters``
    (a context manager factory taking the unwrapped model, e.g. TRL's named "ref" adapter), or PEFT's
    ``disable_adapter``. One home for both the trainer and the TRL drop-in (precomputed values in a batch
    are read by each caller, whose batch keys differ).
    """
    score = model_pair_logps_with_shared if shared else model_sequence_logps
    if ref_model is not None:
        return score(ref_model, *seqs, chunk_rows=chunk_rows)
    if adapters is None and not hasattr(unwrapped, "disable_adapter"):
        raise RuntimeError("this loss needs a reference: no ref_model, LoRA adapters or precomputed log-probs")
    with adapters(unwrapped) if adapters is not None else unwrapped.disable_adapter():
        return score(policy, *seqs, chunk_rows=chunk_rows)


CACHE_VERSION = "v2"  # bump when the key or the stored values change meaning
_VOLATILE_CONFIG = ("_name_or_path", "transformers_version", "_commit_hash")


def sample_indices(n: int, sample: int) -> torch.Tensor:
    """``sample`` evenly spaced indices into ``n`` values, first and last included, in exact integer
    arithmetic (a float32 ``linspace`` rounds ``n - 1`` up past the end once n exceeds 2**24)."""
    return torch.arange(sample, dtype=torch.int64) * (n - 1) // max(1, sample - 1)


@torch.no_grad()
def model_fingerprint(model: Any, sample: int = 4096) -> str:
    """Hash of what determines a model's outputs, cheap enough for billions of parameters.

    Per tensor: name, shape, dtype, the float64 sum (moves with any real change of any value) and
    ``sample`` evenly spaced values (all of them for small tensors). Plus the class and the config
    without the fields that only say where it was loaded from.
    """
    h = hashlib.sha256(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        fields = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG}
        h.update(json.dumps(fields, sort_keys=True, default=str).encode())
    for name, t in model.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.device.type == "meta" or t.numel() == 0:
            continue
        flat = t.detach().reshape(-1)
        h.update(f"{float(flat.sum(dtype=torch.float64)):.12e}".encode())
        if flat.numel() > sample:
            flat = flat[sample_indices(flat.numel(), sample).to(flat.device)]
        h.update(flat.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_key(model_id: str, rows: list[dict[str, Any]], fingerprint: str = "") -> str:
    """Key of the cached values: model id, model fingerprint and every row's token ids."""
    h = hashlib.sha256(f"{CACHE_VERSION}\0{model_id}\0{fingerprint}".encode())
    for r in rows:
        h.update(json.dumps([r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]]).encode())
    return h.hexdigest()[:32]


@torch.no_grad()
def compute_reference_logps(
    model: Any,
    rows: list[dict[str, Any]],
    pad_token_id: int,
    batch_size: int = 8,
    device: str | None = None,
    autocast: torch.dtype | None = None,
    desc: str = "",
) -> torch.Tensor:
    """(len(rows), 2) summed reference log-probs of (chosen, rejected) for every row.

    autocast: the mixed-precision dtype training will run under (e.g. bf16), so the cached values
    equal what a live reference would give inside the training step.
    """
    collate = PreferenceCollator(pad_token_id)
    device = device or next(model.parameters()).device
    dev_type = torch.device(device).type
    model.eval()
    out = []
    label = f"{desc}: reference log-probs" if desc else "reference log-probs"
    for s in tqdm(range(0, len(rows), batch_size), desc=label, leave=False):
        batch = collate(rows[s : s + batch_size])
        ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
        with torch.autocast(dev_type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            sums = model_sequence_logps(model, ids, mask, labels).float().cpu()
        n = len(sums) // 2
        out.append(torch.stack([sums[:n], sums[n:]], dim=1))
    return torch.cat(out) if out else torch.zeros(0, 2)


def checksum(key: str, values: torch.Tensor) -> str:
    """SHA-256 of the cache key and the values' bytes (stored beside the values as ``<key>.sha256``)."""
    data = values.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(key.encode() + b"\0" + data).hexdigest()


def _load_cached(path: str, key: str, n: int) -> torch.Tensor | None:
    """The cached (n, 2) values, or None (with a warning) when the file is unusable."""
    try:
        values = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, or not plain tensors: never trust it
        log.warning("reference log-prob cache %s is unreadable (%s); recomputing", path, type(e).__name__)
        return None
    if not isinstance(values, torch.Tensor) or tuple(values.shape) != (n, 2) or not values.is_floating_point():
        log.warning("reference log-prob cache %s does not hold (%d, 2) values; recomputing", path, n)
        return None
    if not bool(torch.isfinite(values).all()):
        log.warning("reference log-prob cache %s holds NaN or infinite values; recomputing", path)
        return None
    try:
        with open(_checksum_path(path), encoding="ascii") as f:
            expected = f.read().strip()
    except (OSError, ValueError):
        expected = None
    if expected != checksum(key, values):
        log.warning("reference log-prob cache %s does not match its checksum (changed or replaced); recomputing", path)
        return None
    return values


def _checksum_path(path: str) -> str:
    return path.removesuffix(".pt") + ".sha256"


def _write(path: str, key: str, values: torch.Tensor) -> None:
    """The values, then their checksum, each written atomically (per process: ranks may write one key at once)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    torch.save(values, tmp)
    os.replace(tmp, path)
    side = _checksum_path(path)
    with open(f"{side}.{os.getpid()}.tmp", "w", encoding="ascii") as f:
        f.write(checksum(key, values) + "\n")
    os.replace(f"{side}.{os.getpid()}.tmp", side)


def attach_reference_logps(
    model: Any,
    model_id: str,
    rows: list[dict[str, Any]],
    pad_token_id: int,
    batch_size: int = 8,
    *,
    autocast: torch.dtype | None = None,
    desc: str = "",
) -> str:
    """Add ``ref_logps`` (chosen, rejected) to each row, from the disk cache or computed now; returns the path.

    autocast: the mixed-precision dtype of training (part of the cache key: values differ under it).
    desc: the run's name, shown on the progress bar.
    """
    key = cache_key(f"{model_id}\0autocast={autocast}", rows, model_fingerprint(model))
    path = os.path.join(cache_dir(), "ref_logps", f"{key}.pt")
    values = _load_cached(path, key, len(rows)) if os.path.exists(path) else None
    if values is not None:
        log.info("reference log-probs from cache %s", path)
    else:
        values = compute_reference_logps(model, rows, pad_token_id, batch_size, autocast=autocast, desc=desc)
        _write(path, key, values)
    for r, v in zip(rows, values.tolist(), strict=True):
        r["ref_logps"] = v
    return path
