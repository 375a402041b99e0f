"""Exact tensor bytes of the fused head's step (benchmarks/memtrack.py): logits-SAM by ``chunked`` keeps ε's
ingredient in the head gradient's own buffer, so it holds no second (V, d) tensor; ``weight`` does."""

import sys

import pytest
import torch

from conftest import ROOT
from logitsam.core.logprobs import IGNORE_INDEX
from logitsam.core.objective import subset_logps
from logitsam.core.registry import LOSSES, resolve_hparams
from logitsam.fused import FusedJob, fused_sequence_sums, plan_rows
from logitsam.sam import common

sys.path.insert(0, str(ROOT / "benchmarks"))
from memtrack import PeakMemory

V, D, B, T = 4096, 64, 2, 24


def _peak(method: str, rho: float, amp: torch.dtype | None) -> tuple[int, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2 * B, T, D, generator=g)
    w = (torch.randn(V, D, generator=g) * 0.05).requires_grad_()
    labels = torch.randint(0, V, (2 * B, T), generator=g)
    labels[:, :5] = IGNORE_INDEX
    spec = LOSSES["dpo"]
    params = resolve_hparams(spec, {})
    lengths = (labels != IGNORE_INDEX).sum(-1)
    ref = torch.full((2 * B,), -200.0)
    plan = plan_rows(labels, 16, ignore_index=IGNORE_INDEX)
    job = FusedJob(plan, B, lambda p, c, r, _aux: spec.fn(subset_logps(p, c, r, lengths, ref, (None, None)), **params).losses,
                   rho, method)  # fmt: skip
    rows = h.reshape(-1, D)[plan.rows].requires_grad_()
    w.grad = torch.zeros_like(w)  # the parameter gradient exists already (steps after the first)
    with PeakMemory() as pm:
        with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
            sums, _ = fused_sequence_sums(rows, w, None, job)
        spec.fn(
            subset_logps(torch.arange(B), sums[:B], sums[B:], lengths, ref, (None, None)), **params
        ).losses.mean().backward()
    return pm.peak, w.grad.clone()


@pytest.mark.parametrize("amp", [None, torch.bfloat16])
def test_chunked_logits_sam_holds_no_second_head_sized_tensor(monkeypatch, amp):
    monkeypatch.setattr(common, "BLOCK_ENTRIES", 256 * D)  # blocks of 256 vocabulary rows
    plain, _ = _peak("auto", 0.0, amp)
    weight, g_weight = _peak("weight", 1e-2, amp)
    chunked, g_chunked = _peak("chunked", 1e-2, amp)
    held = V * D * (2 if amp else 4)  # g in the compute dtype
    assert weight - plain >= held  # the weight method really holds g (the measurement can see it)
    assert chunked - plain <= held / 4, (plain, weight, chunked)
    # the same gradient (under bf16 the two differ by rounding: chunked accumulates g in the fp32 buffer)
    assert (g_chunked - g_weight).norm() <= (1e-2 if amp else 1e-5) * g_weight.norm()
