"""logits-SAM against brute force in float64; full-model SAM against its definition."""

import zlib

import pytest
import torch
import torch.nn.functional as F

from logitsam.core.logprobs import IGNORE_INDEX, token_logps
from logitsam.sam.full import full_sam_backward
from logitsam.sam.logits import choose_method, logits_sam_loss, perturb, perturbed_logits

D = torch.float64
METHODS = ["weight", "gram", "chunked", "auto"]


def dpo_like_loss(labels, sign):
    """A DPO-shaped loss of the logits: rows with sign +1 are 'chosen', −1 'rejected'; masked rows 0."""

    def fn(z):
        lp = token_logps(z, labels)
        margin = (lp * sign).sum()
        return -F.logsigmoid(0.1 * margin) + 0.01 * lp.sum() ** 2

    return fn


def setup(n, d, v, *, bias, seed, lead=None, masked=0.3):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=D)
    w = torch.randn(v, d, generator=g, dtype=D) * 0.3
    b = torch.randn(v, generator=g, dtype=D) if bias else None
    labels = torch.randint(0, v, (n,), generator=g)
    labels[torch.rand(n, generator=g) < masked] = IGNORE_INDEX
    sign = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, -1.0).to(D)
    if lead is not None:
        h, labels, sign = h.reshape(*lead, d), labels.reshape(lead), sign.reshape(lead)
    return h, w, b, dpo_like_loss(labels, sign)


def brute_force(h, w, b, loss_fn, rho):
    """Clone the head, ε by autograd on the weight, differentiate the loss at W + ε."""
    w0 = w.detach().clone().requires_grad_()
    (gw,) = torch.autograd.grad(loss_fn(F.linear(h.detach(), w0, b)), w0)
    eps = rho * gw / gw.norm() if gw.norm() > 0 else torch.zeros_like(gw)
    hc, wc = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    bc = None if b is None else b.detach().clone().requires_grad_()
    z = F.linear(hc, wc + eps, bc)
    loss = loss_fn(z)
    loss.backward()
    return z.detach(), loss.detach(), hc.grad, wc.grad, None if bc is None else bc.grad, eps


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp(min=1e-300)).item()


SHAPES = [
    dict(n=12, d=20, v=30),  # N_r < d
    dict(n=40, d=6, v=25),  # N_r > d
    dict(n=24, d=8, v=17, lead=(2, 12)),  # (B, T, d) hidden
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", SHAPES, ids=["Nr<d", "Nr>d", "3d"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rho", [0.5, -0.5, 1e-4])
def test_every_method_equals_brute_force(method, shape, bias, rho):
    h, w, b, loss_fn = setup(**shape, bias=bias, seed=zlib.crc32(repr((method, bias, rho)).encode()) % 1000)
    _zb, lb, ghb, gwb, gbb, _ = brute_force(h, w, b, loss_fn, rho)
    hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
    bb = None if b is None else b.clone().requires_grad_()
    out = logits_sam_loss(loss_fn, hh, ww, bb, rho=rho, method=method, block=7)
    out.loss.backward()
    assert abs(out.loss.item() - lb.item()) <= 1e-10 * abs(lb.item())
    assert rel(hh.grad, ghb) <= 1e-10 and rel(ww.grad, gwb) <= 1e-10
    if b is not None:
        assert rel(bb.grad, gbb) <= 1e-10
    assert out.eps_norm.item() == pytest.approx(abs(rho), rel=1e-12)


@pytest.mark.parametrize("method", ["weight", "gram", "chunked"])
def test_perturbed_logits_match_and_reuse_clean_logits(method):
    h, w, b, loss_fn = setup(n=16, d=10, v=21, bias=True, seed=3)
    zb, *_ = brute_force(h, w, b, loss_fn, 0.2)
    z = F.linear(h, w, b).requires_grad_()
    (g,) = torch.autograd.grad(loss_fn(z), z)
    ours = perturbed_logits(h, w, g, rho=0.2, method=method, bias=b, logits=F.linear(h, w, b), block=4)
    assert rel(ours, zb) <= 1e-12


def test_eps_has_norm_rho_and_only_scored_rows_matter():
    h, w, b, loss_fn = setup(n=30, d=9, v=13, bias=False, seed=5, masked=0.5)
    *_, eps = brute_force(h, w, b, loss_fn, -0.3)
    assert eps.norm().item() == pytest.approx(0.3, rel=1e-12)
    z = F.linear(h, w).requires_grad_()
    (g,) = torch.autograd.grad(loss_fn(z), z)
    zero_rows = (g == 0).all(-1)
    assert zero_rows.any()  # masked rows have zero logit gradient ...
    p = perturb(h, w, g, rho=-0.3, method="gram")
    # ... yet they are still perturbed (z' = H(W+ε)ᵀ for every row), exactly as brute force says.
    assert rel(p.logits - F.linear(h, w), h @ eps.T) <= 1e-12


@pytest.mark.parametrize("method", METHODS)
def test_rho_zero_gives_plain_gradient(method):
    h, w, b, loss_fn = setup(n=12, d=7, v=11, bias=True, seed=9)
    hh, ww, bb = (t.clone().requires_grad_() for t in (h, w, b))
    loss_fn(F.linear(hh, ww, bb)).backward()
    h2, w2, b2 = (t.clone().requires_grad_() for t in (h, w, b))
    out = logits_sam_loss(loss_fn, h2, w2, b2, rho=0.0, method=method)
    out.loss.backward()
    for a, c in ((hh, h2), (ww, w2), (bb, b2)):
        assert torch.equal(a.grad, c.grad) or rel(c.grad, a.grad) <= 1e-14
    assert out.eps_norm.item() == 0.0


def test_zero_gradient_means_no_perturbation():
    h, w, b, _ = setup(n=5, d=4, v=6, bias=True, seed=1)
    z = F.linear(h, w, b)
    p = perturb(h, w, torch.zeros_like(z), rho=0.1, method="gram", bias=b)
    assert torch.equal(p.logits, z) and p.eps_norm.item() == 0.0


class TiedLM(torch.nn.Module):
    def __init__(self, v=19, d=8, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = torch.nn.Embedding(v, d).double()
        self.body = torch.nn.Linear(d, d).double()

    def hidden(self, ids):
        return torch.tanh(self.body(self.emb(ids)))


@pytest.mark.parametrize("method", METHODS)
def test_tied_embeddings_untouched_and_gradient_exact(method):
    ids = torch.tensor([[1, 5, 7, 2, 9, 3], [4, 4, 8, 1, 0, 6]])
    labels = torch.tensor([[IGNORE_INDEX, 7, 2, 9, 3, IGNORE_INDEX], [IGNORE_INDEX, 8, 1, 0, 6, IGNORE_INDEX]])
    sign = torch.tensor([[1.0] * 6, [-1.0] * 6], dtype=D)
    loss_fn = dpo_like_loss(labels, sign)
    model, ref = TiedLM(), TiedLM()
    before = model.emb.weight.detach().clone()
    out = logits_sam_loss(loss_fn, model.hidden(ids), model.emb.weight, rho=0.7, method=method)
    out.loss.backward()
    assert torch.equal(model.emb.weight, before)  # never modified in place
    # Brute force: the head product uses W + ε, the input embedding uses W; one shared parameter.
    w0 = ref.emb.weight.detach().clone().requires_grad_()
    (gw,) = torch.autograd.grad(loss_fn(F.linear(ref.hidden(ids).detach(), w0)), w0)
    eps = 0.7 * gw / gw.norm()
    loss_fn(F.linear(ref.hidden(ids), ref.emb.weight + eps)).backward()
    assert rel(model.emb.weight.grad, ref.emb.weight.grad) <= 1e-10
    assert rel(model.body.weight.grad, ref.body.weight.grad) <= 1e-10


def test_auto_picks_by_shape_and_memory():
    assert choose_method(512, 256, 2560, 50304) == "gram"  # N_r ≪ d
    assert choose_method(8192, 8192, 256, 50304) == "weight"  # N_r ≫ d, memory free
    assert choose_method(8192, 8192, 256, 50304, max_extra_bytes=1e8) == "chunked"
    h, w, _b, loss_fn = setup(n=12, d=30, v=40, bias=False, seed=2)
    assert logits_sam_loss(loss_fn, h, w, rho=0.1).method == "gram"
    h, w, _b, loss_fn = setup(n=40, d=6, v=25, bias=False, seed=2)  # N_r > d: weight is cheapest ...
    assert logits_sam_loss(loss_fn, h, w, rho=0.1).method == "weight"
    hb, wb = h.float().bfloat16(), w.float().bfloat16()  # ... but never for a bf16 head
    assert logits_sam_loss(lambda z: loss_fn(z.double()), hb, wb, rho=0.1).method in ("gram", "chunked")
    assert choose_method(8192, 8192, 256, 50304, allow_weight=False) in ("gram", "chunked")


def test_metrics_and_bad_arguments():
    h, w, b, loss_fn = setup(n=12, d=7, v=11, bias=True, seed=4)
    out = logits_sam_loss(loss_fn, h, w, b, rho=0.05)
    assert set(out.metrics) == {"sam/loss_pre", "sam/loss_post", "sam/eps_norm", "sam/grad_norm"}
    assert out.metrics["sam/loss_post"] >= out.metrics["sam/loss_pre"]  # ascent direction, small ρ
    with pytest.raises(ValueError, match="unknown logits-SAM method"):
        perturb(h, w, torch.zeros(12, 11, dtype=D), rho=0.1, method="fast")
    with pytest.raises(ValueError, match="expected"):
        perturb(h, w, torch.zeros(12, 10, dtype=D), rho=0.1)


def test_full_sam_matches_definition_and_restores_parameters():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)).double()
    x, y = torch.randn(11, 5, dtype=D), torch.randint(0, 3, (11,))
    closure = lambda: F.cross_entropy(model(x), y)  # noqa: E731
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    grads = torch.autograd.grad(closure(), params)
    norm = torch.sqrt(sum(g.square().sum() for g in grads))
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p.add_(0.05 * g / norm)
    expected = torch.autograd.grad(closure(), params)
    with torch.no_grad():
        for p, orig in zip(params, before, strict=True):
            p.copy_(orig)
    out = full_sam_backward(params, closure, rho=0.05)
    for p, orig, e in zip(params, before, expected, strict=True):
        assert torch.equal(p, orig)
        assert rel(p.grad, e) <= 1e-12
    assert out.eps_norm.item() == pytest.approx(0.05)
    assert out.loss_post > out.loss_pre


def test_bf16_head_weight_method_rounds_eps_away_gram_keeps_it():
    # A head of realistic scale (|W| ~ 0.02) in bf16 with the paper's ρ = 1e-4.
    g = torch.Generator().manual_seed(0)
    h = torch.randn(32, 64, generator=g).bfloat16()
    w = (0.02 * torch.randn(512, 64, generator=g)).bfloat16()
    labels = torch.randint(0, 512, (32,), generator=g)
    loss_fn = dpo_like_loss(labels, torch.where(torch.arange(32) % 2 == 0, 1.0, -1.0))
    z = F.linear(h, w).float().requires_grad_()
    (grad,) = torch.autograd.grad(loss_fn(z), z)
    exact = F.linear(h.double(), w.double()) + h.double() @ brute_eps(h, w, grad, 1e-4).T  # ε in float64
    delta = exact - F.linear(h.double(), w.double())
    for method, kept in (("weight", False), ("gram", True)):
        p = perturb(h, w, grad, rho=1e-4, method=method).logits.double()
        moved = p - F.linear(h, w).double()
        if kept:
            assert rel(moved, delta) < 0.01  # the perturbation survives (measured 5e-4)
        else:
            assert rel(moved, delta) > 0.5  # W + ε rounds back to W except where |W| is tiny (measured 1.01)


def brute_eps(h, w, grad, rho):
    gw = grad.double().T @ h.double()
    return rho * gw / gw.norm()
