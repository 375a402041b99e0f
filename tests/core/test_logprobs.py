"""Log-prob paths: against torch's log_softmax, against each other, bf16 upcast, masking."""

import pytest
import torch

from logitsam.core.logprobs import (
    IGNORE_INDEX,
    sequence_logps,
    shift_for_causal_lm,
    token_logps,
)


def make(n=37, d=16, v=53, dtype=torch.float64, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(v, d, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(v, generator=g, dtype=dtype, requires_grad=True) if bias else None
    labels = torch.randint(0, v, (n,), generator=g)
    labels[::3] = IGNORE_INDEX
    return h, w, b, labels


def reference(h, w, b, labels):
    z = torch.nn.functional.linear(h, w, b).double()
    lp = torch.log_softmax(z, -1).gather(-1, labels.clamp(min=0)[:, None]).squeeze(-1)
    return torch.where(labels != IGNORE_INDEX, lp, 0.0)


@pytest.mark.parametrize("chunk", [1, 5, 1024])
@pytest.mark.parametrize("bias", [True, False])
def test_logits_path_matches_log_softmax_with_gradients(chunk, bias):
    h, w, b, labels = make(bias=bias)
    weights = torch.randn(labels.shape, dtype=torch.float64)
    ours = token_logps(torch.nn.functional.linear(h, w, b), labels, chunk_size=chunk)
    ref = reference(h, w, b, labels)
    assert torch.allclose(ours, ref, rtol=0, atol=1e-12)
    params = [h, w] + ([b] if bias else [])
    g1 = torch.autograd.grad((ours * weights).sum(), params)
    g2 = torch.autograd.grad((ref * weights).sum(), params)
    for a, c in zip(g1, g2, strict=True):
        assert torch.allclose(a, c, rtol=0, atol=1e-12)


def test_bf16_is_upcast_for_the_log_softmax():
    h, w, b, labels = make(dtype=torch.float32, n=16, v=4000)
    z16 = (torch.nn.functional.linear(h, w, b) * 3).detach().to(torch.bfloat16).requires_grad_()
    lp = token_logps(z16, labels)
    assert lp.dtype == torch.float32
    exact = reference(z16.double(), torch.eye(4000, dtype=torch.float64), None, labels)
    # Exact log-softmax of the bf16 values; a bf16 log-softmax would be off by ~1e-1 here.
    assert torch.allclose(lp.double(), exact, atol=1e-4)
    lp.sum().backward()
    assert z16.grad.dtype == torch.bfloat16


def test_sequence_sums_and_shift():
    labels = torch.tensor([[IGNORE_INDEX, 5, 6, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX, 7, 8]])
    tok = torch.tensor([[9.0, -1.0, -2.0, 9.0], [9.0, 9.0, -0.5, -0.25]])
    sums, lengths = sequence_logps(tok, labels)
    assert sums.tolist() == [-3.0, -0.75] and lengths.tolist() == [2, 2]
    shifted = shift_for_causal_lm(labels)
    assert shifted.tolist() == [[5, 6, IGNORE_INDEX, IGNORE_INDEX], [IGNORE_INDEX, 7, 8, IGNORE_INDEX]]
