"""Per-token and per-sequence log-probs from logits the model already produced.

A custom autograd function works over blocks of scored tokens, so a float32 copy of the full
(N, V) logits never exists: each block is upcast to float32 only while its log-softmax is formed.
Positions whose label is ``IGNORE_INDEX`` (prompt, padding) get log-prob 0 and no gradient. The
trainer's default path never has the logits at all: see :mod:`logitsam.fused`.
"""

from __future__ import annotations

import torch
from torch import Tensor

IGNORE_INDEX = -100


def _upcast(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()


def _pick(z: Tensor, labels: Tensor) -> Tensor:
    """z (n, V), labels (n,) all scored -> z[i, labels[i]]."""
    return z.gather(-1, labels[:, None]).squeeze(-1)


# Logits per block of rows: large on a GPU (few big kernels), small on a CPU (cache, memory).
CHUNK_ELEMENTS = {"cuda": 1 << 27, "cpu": 1 << 24}  # 512 MiB / 64 MiB of float32


def chunk_rows_for(vocab: int, device: torch.device) -> int:
    """Rows per block so a float32 block of logits is about CHUNK_ELEMENTS for the device."""
    return max(1, CHUNK_ELEMENTS["cuda" if device.type == "cuda" else "cpu"] // max(1, vocab))


def _scored_blocks(labels: Tensor, chunk: int | None, vocab: int) -> list[Tensor]:
    """Indices of scored rows (label != IGNORE_INDEX), in blocks of at most ``chunk`` rows.

    ``chunk=None`` sizes blocks for the device (:func:`chunk_rows_for`).
    """
    rows = (labels != IGNORE_INDEX).nonzero().squeeze(-1)
    return list(rows.split(chunk or chunk_rows_for(vocab, labels.device)))


def _grad_block(z: Tensor, lse: Tensor, labels: Tensor, gout: Tensor) -> Tensor:
    """d(logp)/dz · gout for one block of scored rows: gout·(onehot(label) − softmax(z)).

    ``z`` must be a private copy (it is overwritten in place to keep one temporary per block).
    """
    g = gout.to(z.dtype)
    dz = z.sub_(lse[:, None]).exp_().mul_(-g[:, None])
    dz.scatter_add_(-1, labels[:, None], g[:, None])
    return dz


class _LogitsLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, chunk: int | None) -> Tensor:
        out = torch.zeros(logits.shape[0], dtype=_upcast(logits[:1]).dtype, device=logits.device)
        lse = torch.zeros_like(out)
        for idx in _scored_blocks(labels, chunk, logits.shape[-1]):
            z = _upcast(logits[idx])
            lse[idx] = torch.logsumexp(z, dim=-1)
            out[idx] = _pick(z, labels[idx]) - lse[idx]
        ctx.save_for_backward(logits, labels, lse)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, gout: Tensor):
        logits, labels, lse = ctx.saved_tensors
        grad = torch.zeros_like(logits)
        for idx in _scored_blocks(labels, ctx.chunk, logits.shape[-1]):
            grad[idx] = _grad_block(_upcast(logits[idx]), lse[idx], labels[idx], gout[idx]).to(logits.dtype)
        return grad, None, None


def token_logps(logits: Tensor, labels: Tensor, *, chunk_size: int | None = None) -> Tensor:
    """Log-prob of each label token.

    logits: (..., V) in any float dtype (bf16/fp16 upcast to fp32 block by block).
    labels: (...) int64, ``IGNORE_INDEX`` where the position is not scored.
    Returns (...) float32 (float64 for float64 logits); 0 at ignored positions.
    """
    lead = labels.shape
    flat = _LogitsLogps.apply(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), chunk_size)
    return flat.reshape(lead)


def token_logps_twice_differentiable(logits: Tensor, labels: Tensor) -> Tensor:
    """Same values as :func:`token_logps` through plain autograd ops, so Hessian-vector products work.

    Materialises a float32 (..., V) log-softmax: use it for curvature measurements, not training.
    """
    lp = torch.log_softmax(_upcast(logits), dim=-1)
    picked = lp.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    return torch.where(labels != IGNORE_INDEX, picked, 0.0)


def sequence_logps(token_lp: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Sum of token log-probs per sequence and the number of scored tokens.

    token_lp: (B, T); labels: (B, T). Returns (sums (B,), lengths (B,) int64).
    """
    mask = labels != IGNORE_INDEX
    return (token_lp * mask).sum(-1), mask.sum(-1)


def shift_for_causal_lm(labels: Tensor) -> Tensor:
    """Align labels (B, T) with causal-LM logits: position t scores token t+1; last position ignored."""
    shifted = torch.full_like(labels, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]
    return shifted
