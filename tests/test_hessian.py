"""Hutchinson traces against exact Hessian traces on a tiny model in float64."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from logitsam.diagnostics.hessian import hutchinson, logit_hessian_trace, parameter_hessian_trace

D = torch.float64


class Tiny(torch.nn.Module):
    def __init__(self, v=7, d=4):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(v, d).double()
        self.mid = torch.nn.Linear(d, d).double()
        self.head = torch.nn.Linear(d, v, bias=False).double()

    def forward(self, ids):
        return self.head(torch.tanh(self.mid(self.emb(ids))))


IDS = torch.tensor([[1, 2, 3, 4], [1, 2, 5, 6]])  # row 0 chosen, row 1 rejected


def dpo_of_logits(z):
    lp = torch.log_softmax(z[:, :-1], -1).gather(-1, IDS[:, 1:, None]).squeeze(-1)[:, 1:].sum(-1)
    return -F.logsigmoid(0.5 * (lp[0] - lp[1]) + 0.3)


def test_parameter_trace_matches_exact():
    model = Tiny()
    names = [n for n, _ in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    shapes = [p.shape for p in model.parameters()]

    def loss_of(vec):
        parts, i = {}, 0
        for n, s in zip(names, shapes, strict=True):
            parts[n] = vec[i : i + s.numel()].reshape(s)
            i += s.numel()
        return dpo_of_logits(functional_call(model, parts, (IDS,)))

    exact = torch.autograd.functional.hessian(loss_of, flat).diagonal().sum().item()
    est = parameter_hessian_trace(lambda: dpo_of_logits(model(IDS)), list(model.parameters()), probes=2000)
    assert abs(est.mean - exact) < 4 * est.stderr + 1e-9
    assert est.stderr < 0.2 * abs(exact)


def test_logit_trace_matches_exact():
    z = Tiny()(IDS).detach()
    exact = torch.autograd.functional.hessian(lambda x: dpo_of_logits(x.reshape(z.shape)), z.reshape(-1))
    exact = exact.diagonal().sum().item()
    est = logit_hessian_trace(dpo_of_logits, z, probes=2000)
    assert abs(est.mean - exact) < 4 * est.stderr + 1e-9


def test_hutchinson_exact_on_diagonal_and_validates():
    x = torch.randn(5, dtype=D, requires_grad=True)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=D)
    (g,) = torch.autograd.grad((w * x.square()).sum(), x, create_graph=True)
    est = hutchinson([g], [x], probes=3)
    assert est.mean == pytest.approx(30.0) and est.stderr == pytest.approx(0.0)  # Rademacher: exact
    with pytest.raises(ValueError):
        hutchinson([g], [x], probes=0)
