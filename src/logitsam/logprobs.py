"""Per-token and per-sequence log-probs, from logits or from hidden states and the output head.

Both paths are custom autograd functions that work over blocks of tokens, so a float32 copy of the
full (N, V) logits never exists: the logits (or hidden states) are kept in their own dtype and
each block is upcast to float32 only while its log-softmax is formed. The hidden-state path never
materialises the (N, V) logits at all, nor their gradient; backward recomputes each block.
Positions whose label is ``IGNORE_INDEX`` (prompt, padding) get log-prob 0 and no gradient.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

IGNORE_INDEX = -100


def _upcast(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()


def _pick(z: Tensor, labels: Tensor) -> Tensor:
    """z (n, V), labels (n,) all scored -> z[i, labels[i]]."""
    return z.gather(-1, labels[:, None]).squeeze(-1)


BLOCK_ELEMENTS = 1 << 22  # ~16 MB of float32 per (rows × V) block


def _scored_blocks(labels: Tensor, chunk: int | None, vocab: int) -> list[Tensor]:
    """Indices of scored rows (label != IGNORE_INDEX), in blocks of at most ``chunk`` rows.

    ``chunk=None`` sizes blocks to about BLOCK_ELEMENTS logits so the float32 temporaries of a
    block stay small next to the (N, V) tensors the caller already holds.
    """
    rows = (labels != IGNORE_INDEX).nonzero().squeeze(-1)
    return list(rows.split(chunk or max(1, BLOCK_ELEMENTS // vocab)))


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


class _HiddenLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, chunk: int | None) -> Tensor:
        out = torch.zeros(hidden.shape[0], dtype=_upcast(hidden[:1]).dtype, device=hidden.device)
        lse = torch.zeros_like(out)
        for idx in _scored_blocks(labels, chunk, weight.shape[0]):
            z = _upcast(torch.nn.functional.linear(hidden[idx], weight, bias))
            lse[idx] = torch.logsumexp(z, dim=-1)
            out[idx] = _pick(z, labels[idx]) - lse[idx]
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, gout: Tensor):
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        acc = _upcast(weight[:1]).dtype  # accumulate parameter gradients in at least float32
        d_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        d_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if ctx.needs_input_grad[1] else None
        d_bias = None
        if bias is not None and ctx.needs_input_grad[2]:
            d_bias = torch.zeros(bias.shape, dtype=acc, device=bias.device)
        for idx in _scored_blocks(labels, ctx.chunk, weight.shape[0]):  # ignored rows have zero gradient
            h = hidden[idx]
            z = _upcast(torch.nn.functional.linear(h, weight, bias))
            dz = _grad_block(z, lse[idx], labels[idx], gout[idx])
            if d_hidden is not None:
                d_hidden[idx] = (dz.to(weight.dtype) @ weight).to(hidden.dtype)
            if d_weight is not None:
                d_weight += dz.T @ _upcast(h)
            if d_bias is not None:
                d_bias += dz.sum(0)
        d_weight = None if d_weight is None else d_weight.to(weight.dtype)
        d_bias = None if d_bias is None else d_bias.to(bias.dtype)
        return d_hidden, d_weight, d_bias, None, None


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


def token_logps_from_hidden(
    hidden: Tensor, weight: Tensor, labels: Tensor, bias: Tensor | None = None, *, chunk_size: int | None = None
) -> Tensor:
    """Log-prob of each label token with logits = hidden·weightᵀ + bias, never forming (N, V).

    hidden: (..., d); weight: (V, d); bias: (V,) or None; labels: (...) as in :func:`token_logps`.
    Returns (...) float32 (float64 for float64 inputs). Gradients reach hidden, weight and bias.
    """
    lead = labels.shape
    flat = _HiddenLogps.apply(hidden.reshape(-1, hidden.shape[-1]), weight, bias, labels.reshape(-1), chunk_size)
    return flat.reshape(lead)


def sequence_logps(token_lp: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Sum of token log-probs per sequence and the number of scored tokens.

    token_lp: (B, T); labels: (B, T). Returns (sums (B,), lengths (B,) int64).
    """
    mask = labels != IGNORE_INDEX
    return (token_lp * mask).sum(-1), mask.sum(-1)


def model_sequence_logps(model: Any, input_ids: Tensor, attention_mask: Tensor, labels: Tensor) -> Tensor:
    """(B,) summed log-probs of the labelled tokens under a causal LM (labels (B, T) not yet shifted)."""
    shifted = shift_for_causal_lm(labels)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return sequence_logps(token_logps(logits, shifted), shifted)[0]


def shift_for_causal_lm(labels: Tensor) -> Tensor:
    """Align labels (B, T) with causal-LM logits: position t scores token t+1; last position ignored."""
    shifted = torch.full_like(labels, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]
    return shifted
