"""The fused head (log-probs, loss gradient and logits-SAM made in row chunks) against brute force in float64."""

import zlib

import pytest
import torch
import torch.nn.functional as F

from logitsam.core.logprobs import IGNORE_INDEX, sequence_logps, token_logps_twice_differentiable
from logitsam.core.objective import pair_logps, subset_logps
from logitsam.core.registry import LOSSES, resolve_hparams
from logitsam.fused import FusedJob, choose_fused_method, fused_sequence_sums, plan_rows

D = torch.float64


def make(b=3, t=9, d=5, v=11, *, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(2 * b, t, d, generator=g, dtype=D)
    w = torch.randn(v, d, generator=g, dtype=D) * 0.7
    bb = torch.randn(v, generator=g, dtype=D) if bias else None
    labels = torch.randint(0, v, (2 * b, t), generator=g)
    for s in range(2 * b):  # prompt prefix, random holes, padding tail
        labels[s, : 1 + s % 3] = IGNORE_INDEX
        labels[s, t - (s % 2) :] = IGNORE_INDEX
    labels[torch.rand(2 * b, t, generator=g) < 0.15] = IGNORE_INDEX
    labels[:, t // 2] = torch.randint(0, v, (2 * b,), generator=g)  # every sequence scores something
    ref = torch.randn(2 * b, generator=g, dtype=D) * 3 - 10
    scores = (torch.rand(b, generator=g, dtype=D) * 5, torch.rand(b, generator=g, dtype=D) * 5)
    return h, w, bb, labels, ref, scores


def loss_of_sums(spec, params, sums, lengths, ref, scores):
    return spec.fn(pair_logps(sums, lengths, ref, scores), **params).losses.mean()


def brute(spec, params, h, w, b, labels, ref, scores, rho, extra=None):
    """Cloned head, ε by autograd, then the loss (or ``extra`` of the sums) at W + ε."""
    lengths = (labels != IGNORE_INDEX).sum(-1)
    r = ref if spec.needs_reference else None

    def sums_of(hh, ww, bb):
        z = F.linear(hh, ww, bb)
        return sequence_logps(token_logps_twice_differentiable(z, labels), labels)[0]

    eps = torch.zeros_like(w)
    if rho:
        w0 = w.detach().clone().requires_grad_()
        (gw,) = torch.autograd.grad(loss_of_sums(spec, params, sums_of(h.detach(), w0, b), lengths, r, scores), w0)
        eps = rho * gw / gw.norm()
    hc, wc = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    bc = None if b is None else b.detach().clone().requires_grad_()
    sums = sums_of(hc, wc + eps, bc)
    loss = loss_of_sums(spec, params, sums, lengths, r, scores)
    if extra is not None:
        loss = extra(loss, sums)
    loss.backward()
    return loss.detach(), hc.grad, wc.grad, None if bc is None else bc.grad


def fused(spec, params, h, w, b, labels, ref, scores, rho, method, chunk_rows, extra=None):
    lengths = (labels != IGNORE_INDEX).sum(-1)
    r = ref if spec.needs_reference else None
    hc, wc = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    bc = None if b is None else b.detach().clone().requires_grad_()
    plan = plan_rows(labels, chunk_rows, ignore_index=IGNORE_INDEX)

    def pair_losses(pairs, sc, sr, _aux):
        return spec.fn(subset_logps(pairs, sc, sr, lengths, r, scores), **params).losses

    # whole_batch as the objective sets it (TRL's aot, aot_unpaired, sft couple pairs)
    job = FusedJob(plan, labels.shape[0] // 2, pair_losses, rho, method, whole_batch=spec.batch_coupled)
    sums, res = fused_sequence_sums(hc.reshape(-1, hc.shape[-1])[plan.rows], wc, bc, job)
    loss = loss_of_sums(spec, params, sums, lengths, r, scores)
    if extra is not None:
        loss = extra(loss, sums)
    (loss * 0.37).backward()  # any upstream scale (gradient accumulation, loss scaling) must pass through
    grads = [None if t is None or t.grad is None else t.grad / 0.37 for t in (hc, wc, bc)]
    return loss.detach(), *grads, res


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp(min=1e-300)).item()


def check(got, want, tol=1e-10):
    for x, y in zip(got, want, strict=True):
        if y is None:
            assert x is None
        else:
            assert rel(x, y) <= tol, (rel(x, y), x, y)


SLOW = pytest.mark.slow


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize(
    ("rho", "method"),
    [(0.0, "-"), (0.5, "weight"), (-0.5, "weight"), (0.5, "gram"), (-0.5, "gram"), (0.5, "chunked"), (-0.5, "chunked")],
)
# the quick signal (`pytest -m "not slow"`) keeps one mixed chunking (4); make test runs all four
@pytest.mark.parametrize(
    "chunk_rows", [pytest.param(1, marks=SLOW), 4, pytest.param(13, marks=SLOW), pytest.param(10_000, marks=SLOW)]
)
def test_every_loss_every_method_every_chunking_matches_brute_force(name, rho, method, chunk_rows):
    spec = LOSSES[name]
    params = resolve_hparams(spec, {})
    h, w, b, labels, ref, scores = make(
        seed=zlib.crc32(f"{name}/{chunk_rows}".encode()) % 1000
    )  # stable across processes
    want = brute(spec, params, h, w, b, labels, ref, scores, rho)
    loss, *grads, res = fused(spec, params, h, w, b, labels, ref, scores, rho, method, chunk_rows)
    check([loss, *grads], list(want))
    if rho:
        assert res.method_used == method
        clean = loss_of_sums(spec, params, res.clean_sums, (labels != IGNORE_INDEX).sum(-1), ref, scores)
        assert rel(clean, brute(spec, params, h, w, b, labels, ref, scores, 0.0)[0]) <= 1e-12


@pytest.mark.parametrize(("rho", "method"), [(0.0, "weight"), (0.3, "weight"), (0.3, "chunked")])
@pytest.mark.parametrize("chunk_rows", [2, 10_000])
def test_sums_used_by_another_loss_fall_back_to_the_exact_gradient(rho, method, chunk_rows):
    """Backward gets a gradient that is not the one predicted in forward: it recomputes, still exact."""
    spec = LOSSES["dpo"]
    params = resolve_hparams(spec, {})
    h, w, b, labels, ref, scores = make(seed=5)

    def extra(loss, sums):
        return loss + 0.05 * (sums * torch.arange(1.0, 1 + sums.shape[0], dtype=D)).sin().sum()

    want = brute(spec, params, h, w, b, labels, ref, scores, rho, extra)
    got = fused(spec, params, h, w, b, labels, ref, scores, rho, method, chunk_rows, extra)
    check(got[:4], list(want))


def test_no_bias_tied_weight_and_bias_less_rows():
    """Tied embeddings: the same W used as input embedding and head gets both gradients, untouched in place."""
    spec = LOSSES["dpo"]
    params = resolve_hparams(spec, {})
    h, w, _, labels, ref, scores = make(seed=7, bias=False)
    ids = torch.randint(0, w.shape[0], h.shape[:2])
    w0 = w.clone()

    def run(fused_path):
        wc = w.detach().clone().requires_grad_()
        hh = h + wc[ids]  # embedding lookup through the same weight
        lengths = (labels != IGNORE_INDEX).sum(-1)
        if fused_path:
            plan = plan_rows(labels, 3, ignore_index=IGNORE_INDEX)
            pl = lambda p, c, r, _aux: spec.fn(subset_logps(p, c, r, lengths, ref, scores), **params).losses  # noqa: E731
            job = FusedJob(plan, labels.shape[0] // 2, pl, 0.2, "gram")
            sums, _ = fused_sequence_sums(hh.reshape(-1, hh.shape[-1])[plan.rows], wc, None, job)
        else:
            wl = wc.detach().clone().requires_grad_()
            z = lambda ww: F.linear(hh, ww)  # noqa: E731
            s_of = lambda ww: sequence_logps(token_logps_twice_differentiable(z(ww), labels), labels)[0]  # noqa: E731
            (gw,) = torch.autograd.grad(loss_of_sums(spec, params, s_of(wl), lengths, ref, scores), wl)
            sums = s_of(wc + 0.2 * gw / gw.norm())
        loss_of_sums(spec, params, sums, lengths, ref, scores).backward()
        return wc.grad

    assert rel(run(True), run(False)) <= 1e-10
    assert torch.equal(w, w0)


def test_plan_keeps_pairs_whole_when_they_fit():
    labels = torch.full((4, 6), IGNORE_INDEX)
    labels[0, 2:5] = 1  # pair 0: 3 + 2 rows
    labels[2, 4:6] = 1
    labels[1, 1:6] = 1  # pair 1: 5 + 1 rows
    labels[3, 5] = 1
    plan = plan_rows(labels, 6, ignore_index=IGNORE_INDEX)
    assert [g.pairs.tolist() for g in plan.groups] == [[0], [1]]
    assert [g.chunks for g in plan.groups] == [[(0, 5)], [(5, 11)]]
    assert plan.seq.tolist() == [0, 0, 0, 2, 2, 1, 1, 1, 1, 1, 3]
    plan = plan_rows(labels, 11, ignore_index=IGNORE_INDEX)
    assert [g.pairs.tolist() for g in plan.groups] == [[0, 1]]
    plan = plan_rows(labels, 4, ignore_index=IGNORE_INDEX)  # both pairs longer than a chunk: swept twice, in pieces
    assert [g.chunks for g in plan.groups] == [[(0, 4), (4, 5)], [(5, 9), (9, 11)]]


def test_auto_picks_gram_for_few_rows_and_weight_for_many():
    assert choose_fused_method(256, 4096, 128256, 2) == "gram"
    assert choose_fused_method(8192, 2048, 128256, 2) == "weight"
    # a memory budget (auto passes one chunk of float32 logits): weight's V×d no longer fits
    assert choose_fused_method(8192, 2048, 128256, 2, max_extra_bytes=500e6) == "chunked"
    assert choose_fused_method(1024, 2048, 128256, 2, max_extra_bytes=500e6) == "gram"  # N_r(V + d) fits
    assert choose_fused_method(8192, 2048, 128256, 2, max_extra_bytes=1e6) == "chunked"  # nothing fits: least


def brute_adaptive(spec, params, h, w, b, labels, ref, scores, rho):
    """ε = ρ·(|W|⊙g)/‖|W|⊙g‖ (the paper's code's sam_adaptive) by autograd, loss at W + ε."""
    lengths = (labels != IGNORE_INDEX).sum(-1)

    def sums_of(hh, ww, bb):
        return sequence_logps(token_logps_twice_differentiable(F.linear(hh, ww, bb), labels), labels)[0]

    w0 = w.detach().clone().requires_grad_()
    (gw,) = torch.autograd.grad(loss_of_sums(spec, params, sums_of(h.detach(), w0, b), lengths, ref, scores), w0)
    ga = gw * w.abs()
    eps = rho * ga / ga.norm()
    hc, wc = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    bc = None if b is None else b.detach().clone().requires_grad_()
    loss = loss_of_sums(spec, params, sums_of(hc, wc + eps, bc), lengths, ref, scores)
    loss.backward()
    return loss.detach(), hc.grad, wc.grad, None if bc is None else bc.grad


@pytest.mark.parametrize("name", ["dpo", "cpo", "spo_target"])
@pytest.mark.parametrize("rho", [0.4, -0.4])
@pytest.mark.parametrize("path", ["fused", "fused_small_chunks", "weight", "chunked"])
def test_adaptive_matches_brute_force(name, rho, path):
    from logitsam.sam.logits import logits_sam_loss

    spec = LOSSES[name]
    params = resolve_hparams(spec, {})
    h, w, b, labels, ref, scores = make(seed=11)
    want = brute_adaptive(spec, params, h, w, b, labels, ref, scores, rho)
    plain = brute(spec, params, h, w, b, labels, ref, scores, rho)
    assert rel(plain[2], want[2]) > 1e-4  # adaptive really differs from the plain perturbation
    if path.startswith("fused"):
        lengths = (labels != IGNORE_INDEX).sum(-1)
        hc, wc = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
        bc = b.detach().clone().requires_grad_()
        # auto keeps weight's V×d within one chunk of float32 logits: large chunks -> weight, 1-row chunks -> chunked
        plan = plan_rows(labels, 10_000 if path == "fused" else 1, ignore_index=IGNORE_INDEX)
        pl = lambda p, c, r, _aux: spec.fn(subset_logps(p, c, r, lengths, ref, scores), **params).losses  # noqa: E731
        method = "auto"
        job = FusedJob(plan, labels.shape[0] // 2, pl, rho, method, adaptive=True)
        sums, res = fused_sequence_sums(hc.reshape(-1, hc.shape[-1])[plan.rows], wc, bc, job)
        loss = loss_of_sums(spec, params, sums, lengths, ref, scores)
        assert res.method_used == ("weight" if path == "fused" else "chunked")
    else:
        hc, wc = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
        bc = b.detach().clone().requires_grad_()
        lengths = (labels != IGNORE_INDEX).sum(-1)

        def fn(z):
            return loss_of_sums(
                spec,
                params,
                sequence_logps(token_logps_twice_differentiable(z, labels), labels)[0],
                lengths,
                ref,
                scores,
            )

        loss = logits_sam_loss(fn, hc, wc, bc, rho=rho, method=path, adaptive=True, block=4).loss
    loss.backward()
    check([loss.detach(), hc.grad, wc.grad, bc.grad], list(want))


def test_adaptive_refuses_gram():
    from logitsam.sam.logits import perturb

    h, w, *_ = make()
    with pytest.raises(ValueError, match="adaptive"):
        perturb(
            h.reshape(-1, h.shape[-1]),
            w,
            torch.zeros(h.shape[0] * h.shape[1], w.shape[0], dtype=D),
            rho=0.1,
            method="gram",
            adaptive=True,
        )
