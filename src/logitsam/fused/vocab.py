"""logits-SAM's perturbed sweep in vocabulary order, for ``method: chunked`` in the fused head: ε's
ingredient g (V, d) lives in the head gradient's own buffer, so SAM holds no second (V, d) tensor.

Why vocabulary order (docs/design.md §5): the row-ordered sweep needs all of ε for every row chunk
while it adds every chunk's dz'ᵀH into all of dW, so g and dW' must coexist. Here the outer loop runs
over vocabulary blocks: pass A reads block b of g to build the perturbed logits' log-sum-exp for every
row (online, block by block); with the pair losses known, pass B recomputes block b's logits,
forms dz', adds dz'·(W_b + ε_b) to dH and then overwrites block b of the buffer with dW'_b = dz'_bᵀH:
g_b is not needed again. Cost: two more head products than ``weight`` (pass A's logits and shift);
memory: one block of g in the held dtype and one tile of logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from logitsam.fused.perturbations import held_dtype
from logitsam.fused.products import rows_at_vocab


def vocab_blocks(n_rows: int, v: int, d: int, tile_elements: int, block_entries: int) -> tuple[int, int]:
    """(V_b, R): vocabulary rows per block (≤ ``block_entries`` / d, so a block of g or dW is small) and
    rows per tile (a tile of logits ≤ ``tile_elements``)."""
    v_b = max(1, min(v, block_entries // max(1, d), max(1, tile_elements // max(1, n_rows))))
    return v_b, max(1, min(n_rows, tile_elements // v_b))


def perturbed_sweep_by_vocab(
    h: Tensor,
    w: Tensor,
    b: Tensor | None,
    labels: Tensor,
    seq: Tensor,
    n_seqs: int,
    g_buffer: Tensor,
    scale: Tensor,
    coef_of: Callable[[Tensor], Tensor],
    *,
    cdt: torch.dtype,
    acc: torch.dtype,
    tile_elements: int,
    block_entries: int,
    d_b: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sums (S,) at the head W + scale·g and their gradients; ``g_buffer`` (V, d) holds g on entry and
    dW' = dz'ᵀH on return.

    h: (N_r, d) scored rows; w (V, d), b (V,) or None: the head in the compute dtype ``cdt``; labels,
    seq: (N_r,); coef_of: sums (S,) -> dL/dsums (S,). d_b (V,) is added to in place. Returns
    (sums, u, dH) with u the dL/dsums used and dH (N_r, d) in the accumulation dtype ``acc``.
    """
    n_r, d = h.shape
    v = w.shape[0]
    held = held_dtype(cdt)
    v_b, r = vocab_blocks(n_r, v, d, tile_elements, block_entries)
    tiles = [(s, min(s + r, n_r)) for s in range(0, n_r, r)]

    def logits(s: int, e: int, a: int, a2: int, g_blk: Tensor) -> Tensor:
        hc = h[s:e].to(cdt)
        z = F.linear(hc, w[a:a2], None if b is None else b[a:a2]).to(acc)
        if z.dtype == held:  # float32 products: the shift is added in place (no second tile)
            return z.addmm_(hc.to(held) * scale, g_blk.T)
        # ε's product stays in the held dtype until it meets the float32 logits, so bf16 never rounds ε away
        return z.addcmul_(F.linear(hc.to(held), g_blk), scale)

    # pass A: the perturbed log-sum-exp of every row, online over vocabulary blocks, and the label logits
    m = torch.full((n_r,), float("-inf"), dtype=acc, device=h.device)
    tot = torch.zeros(n_r, dtype=acc, device=h.device)
    zy = torch.zeros(n_r, dtype=acc, device=h.device)
    d_h = torch.zeros(n_r, d, dtype=acc, device=h.device)
    for a in range(0, v, v_b):
        a2 = min(a + v_b, v)
        g_blk = g_buffer[a:a2].to(held)
        for s, e in tiles:
            z = logits(s, e, a, a2, g_blk)
            hit = (labels[s:e] >= a) & (labels[s:e] < a2)
            zy_blk = z.gather(1, (labels[s:e] - a).clamp(0, a2 - a - 1)[:, None]).squeeze(1)
            zy[s:e] = torch.where(hit, zy_blk, zy[s:e])
            m_new = torch.maximum(m[s:e], z.amax(-1))
            tot[s:e] = tot[s:e] * torch.exp(m[s:e] - m_new) + z.sub_(m_new[:, None]).exp_().sum(-1)
            m[s:e] = m_new
            del z
    lse = m + tot.log()
    sums = torch.zeros(n_seqs, dtype=acc, device=h.device).index_add_(0, seq, zy - lse)
    u = coef_of(sums).to(acc)
    g_rows = u[seq]
    k = None
    if cdt == torch.float16:  # fp16 underflows small gradients: scale rows to ~1 and undo it after the products
        k = torch.exp2(-torch.floor(torch.log2(g_rows.abs().amax().clamp(min=1e-30))))
        g_rows = g_rows * k

    # pass B: dz' block by block; block b of the buffer is overwritten once g_b has been used
    for a in range(0, v, v_b):
        a2 = min(a + v_b, v)
        # one row tile: g_b is read before the block is overwritten, so no copy of it is needed
        single = len(tiles) == 1 and g_buffer.dtype == held
        g_blk = g_buffer[a:a2] if single else g_buffer[a:a2].to(held, copy=True)
        for i, (s, e) in enumerate(tiles):
            z = logits(s, e, a, a2, g_blk)
            p = z.sub_(lse[s:e, None]).exp_()
            if cdt == acc:  # dz in place, as the row-ordered sweep does
                dz = p.mul_(-g_rows[s:e, None])
            else:
                dz = torch.mul(p, -g_rows[s:e, None], out=p.new_empty(p.shape, dtype=cdt))
            del z, p
            hit = (labels[s:e] >= a) & (labels[s:e] < a2)
            idx = (labels[s:e] - a).clamp(0, a2 - a - 1)[:, None]
            dz.scatter_add_(1, idx, torch.where(hit, g_rows[s:e], 0.0)[:, None].to(cdt))
            dh = rows_at_vocab(dz, w[a:a2], acc).add_(rows_at_vocab(dz.to(held), g_blk, acc).mul_(scale))
            d_h[s:e] += dh if k is None else dh.div_(k)
            hc = h[s:e].to(cdt)
            if single and k is None and g_buffer.dtype == cdt:  # straight into the buffer, no temporary
                torch.mm(dz.T, hc, out=g_buffer[a:a2])
            else:
                part = dz.T @ hc
                part = part if k is None else part.to(acc).div_(k)
                if i == 0:
                    g_buffer[a:a2].copy_(part)
                else:
                    g_buffer[a:a2].add_(part.to(g_buffer.dtype))
                del part
            if d_b is not None:
                db = dz.sum(0, dtype=acc)
                d_b[a:a2] += db if k is None else db.div_(k)
            del dz
    return sums, u, d_h
