"""Log-prob paths: against torch's log_softmax, against each other, bf16 upcast, masking."""

import pytest
import torch

from logitsam.logprobs import (
    IGNORE_INDEX,
    sequence_logps,
    shift_for_causal_lm,
    token_logps,
    token_logps_from_hidden,
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


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
def test_hidden_path_agrees_with_logits_path(dtype, bias):
    h, w, b, labels = make(dtype=dtype, bias=bias, n=64, v=300)
    weights = torch.randn(labels.shape, dtype=dtype)
    a = token_logps(torch.nn.functional.linear(h, w, b), labels, chunk_size=7)
    c = token_logps_from_hidden(h, w, labels, b, chunk_size=7)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    close = lambda x, y: (x - y).abs().max() <= tol * y.abs().max()  # noqa: E731  (relative to scale)
    assert close(a, c)
    params = [h, w] + ([b] if bias else [])
    ga = torch.autograd.grad((a * weights).sum(), params)
    gc = torch.autograd.grad((c * weights).sum(), params)
    for x, y in zip(ga, gc, strict=True):
        assert x.dtype == y.dtype
        assert close(x, y)


def test_3d_inputs_and_ignored_rows_have_no_gradient():
    h, w, b, labels = make(n=24)
    h3, l3 = h.reshape(2, 12, -1), labels.reshape(2, 12)
    lp = token_logps_from_hidden(h3, w, l3, b, chunk_size=4)
    assert lp.shape == (2, 12)
    assert (lp[l3 == IGNORE_INDEX] == 0).all() and (lp[l3 != IGNORE_INDEX] < 0).all()
    (gh,) = torch.autograd.grad(lp.sum(), h)
    assert (gh[labels == IGNORE_INDEX] == 0).all()
    assert gh[labels != IGNORE_INDEX].abs().sum() > 0


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
    # Hidden path with bf16 inputs: float32 result, bf16 gradients, close to the fp32 computation.
    hb, wb = h.detach().bfloat16().requires_grad_(), w.detach().bfloat16().requires_grad_()
    lpb = token_logps_from_hidden(hb, wb, labels)
    exact = reference(hb.double(), wb.double(), None, labels)
    assert lpb.dtype == torch.float32 and torch.allclose(lpb.double(), exact, atol=0.3)
    lpb.sum().backward()
    assert hb.grad.dtype == torch.bfloat16 and wb.grad.dtype == torch.bfloat16


def test_sequence_sums_and_shift():
    labels = torch.tensor([[IGNORE_INDEX, 5, 6, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX, 7, 8]])
    tok = torch.tensor([[9.0, -1.0, -2.0, 9.0], [9.0, 9.0, -0.5, -0.25]])
    sums, lengths = sequence_logps(tok, labels)
    assert sums.tolist() == [-3.0, -0.75] and lengths.tolist() == [2, 2]
    shifted = shift_for_causal_lm(labels)
    assert shifted.tolist() == [[5, 6, IGNORE_INDEX, IGNORE_INDEX], [IGNORE_INDEX, 7, 8, IGNORE_INDEX]]
