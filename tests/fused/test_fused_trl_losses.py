"""TRL's loss types and options through the fused head with logits-SAM, against brute force in float64.

- the batch-coupled ones (``aot`` and ``aot_unpaired`` sort across the batch, ``sft`` is one token mean over
  the batch): chunks of 1 row, 3 rows and all rows, every SAM method;
- LD-DPO (the sweep sums shared parts and tails as separate sequences), WPO (clean weights measured by the
  clean sweep on the tiles it holds, held fixed under logits-SAM) and an MPO weighted sum with both;
- WPO on its own: chunks of 1 row, 3 rows and all rows, every SAM method, logits-SAM on and off, the weights
  themselves against brute force, and a spy on the head-sized products: WPO's step runs no more than the
  plain step with the same method (no head pass of its own).
Brute force: full logits, ε = ρ·∇_W L/‖∇_W L‖ by autograd, the loss at H(W + ε)ᵀ, backward; the shared sums
from the shared labels and WPO's weights from the clean logits by plain torch ops.
"""

import collections
import copy

import pytest
import torch
import torch.nn.functional as F
from test_trainer_sam import V, batch, grads_of, rel_all
from torch.utils._python_dispatch import TorchDispatchMode

from logitsam.core.combined import combine_losses, extra_inputs
from logitsam.core.extras import shared_labels
from logitsam.core.logprobs import IGNORE_INDEX, sequence_logps, shift_for_causal_lm, token_logps_twice_differentiable
from logitsam.core.objective import Objective, pair_logps
from logitsam.core.registry import get_loss, resolve_hparams
from logitsam.fused import FusedJob, fused_sequence_sums, plan_rows
from logitsam.models import tiny_model

ALL_ROWS = 10**6
# the quick signal (`pytest -m "not slow"`) keeps the mixed chunking; make test runs all three
CHUNKS = [pytest.param(1, marks=pytest.mark.slow), 3, pytest.param(ALL_ROWS, marks=pytest.mark.slow)]


def data_of(seed=6):
    d = batch(b=3, seed=seed)
    d["score_chosen"] = d["score_rejected"] = None
    d["labels"][1, 4:7] = IGNORE_INDEX  # chosen and rejected lengths differ: LD-DPO's tails are not empty
    d["labels"][5, 4:6] = IGNORE_INDEX
    d["ref_shared"] = d["ref_logps"] + 0.5 * torch.rand(
        6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    return d


def brute_wpo(logits, labels):
    """(S,) WPO's log-weights from full logits: mean over scored tokens of log p(y_t) − log Σ_v p(v)²."""
    lp = torch.log_softmax(logits, -1)
    aligned = lp.gather(-1, labels.clamp(min=0)[..., None])[..., 0] - torch.logsumexp(2 * lp, -1)
    return sequence_logps(aligned, labels)[0] / (labels != IGNORE_INDEX).sum(-1)


def brute(model, spec, params, data, rho):
    m = copy.deepcopy(model)
    labels = shift_for_causal_lm(data["labels"])
    shared = shared_labels(labels)
    lengths = (labels != IGNORE_INDEX).sum(-1)
    ref = data["ref_logps"] if spec.needs_reference else None
    need = extra_inputs(spec, params)
    hidden = m(input_ids=data["input_ids"], attention_mask=data["attention_mask"], output_hidden_states=True)
    hidden = hidden.hidden_states[-1]
    head = m.get_output_embeddings()
    extra = {"ref_shared": data["ref_shared"]} if "shared" in need else {}
    if "wpo" in need:
        extra["wpo"] = brute_wpo(F.linear(hidden, head.weight, head.bias).detach(), labels)

    def loss_of(z):
        tl = token_logps_twice_differentiable(z, labels)
        ex = {**extra, "shared": sequence_logps(tl, shared)[0]} if "shared" in need else extra
        return spec.fn(
            pair_logps(sequence_logps(tl, labels)[0], lengths, ref, (None, None), ex), **params
        ).losses.mean()

    w0 = head.weight.detach().clone().requires_grad_()
    (gw,) = torch.autograd.grad(loss_of(F.linear(hidden.detach(), w0, head.bias)), w0)
    loss = loss_of(F.linear(hidden, head.weight + rho * gw / gw.norm(), head.bias))
    loss.backward()
    return loss.detach(), grads_of(m)


def step(spec, params, data, *, fused, rho, method, chunk_rows):
    model = tiny_model(V, seed=2, dtype=torch.float64)
    ref = data["ref_logps"] if spec.needs_reference else None
    obj = Objective(spec, params, rho=rho, method=method, fused=fused, chunk_rows=chunk_rows)
    res = obj(model, data, ref, ref_shared=data["ref_shared"])
    res.loss.backward()
    return res, grads_of(model)


def check(spec, params, data, method, chunk_rows, rho=0.3):
    want_loss, want = brute(tiny_model(V, seed=2, dtype=torch.float64), spec, params, data, rho)
    res, got = step(spec, params, data, fused=True, rho=rho, method=method, chunk_rows=chunk_rows)
    assert res.path == "fused"
    assert abs(res.loss.item() - want_loss.item()) <= 1e-10 * abs(want_loss.item())
    assert rel_all(got, want) <= 1e-10
    _, clean = step(spec, params, data, fused=True, rho=0.0, method=method, chunk_rows=chunk_rows)
    assert rel_all(clean, want) > 1e-6  # logits-SAM moved the gradient: a ρ that never arrived fails
    _, logits_grads = step(spec, params, data, fused=False, rho=rho, method=method, chunk_rows=None)
    assert rel_all(logits_grads, want) <= 1e-10


@pytest.mark.parametrize("name", ["aot", "aot_unpaired", "sft"])
@pytest.mark.parametrize("method", ["weight", "gram", "chunked"])
@pytest.mark.parametrize("chunk_rows", CHUNKS)
def test_batch_coupled_losses_with_logits_sam_over_chunks_are_exact(name, method, chunk_rows):
    spec = get_loss(name)
    assert spec.batch_coupled
    params = resolve_hparams(spec, {"label_smoothing": 0.1} if "label_smoothing" in spec.defaults else {})
    check(spec, params, data_of(), method, chunk_rows)


OPTION_CASES = {
    "ld": (get_loss("dpo"), {"ld_alpha": 0.4}),
    "ld_aot": (get_loss("aot"), {"ld_alpha": 0.4}),
    "wpo": (get_loss("bco_pair"), {"use_weighting": True}),
    "wpo_sft": (get_loss("sft"), {"use_weighting": True}),
    "mpo_ld_wpo": (
        combine_losses(
            [
                ("dpo", 0.8, {"ld_alpha": 0.4, "use_weighting": True}),
                ("bco_pair", 0.2, {"ld_alpha": 0.4}),
                ("sft", 1.0, {"use_weighting": True}),
            ]
        ),
        {},
    ),
}


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
@pytest.mark.parametrize("chunk_rows", CHUNKS)
def test_ld_dpo_wpo_and_weighted_sums_with_logits_sam_over_chunks_are_exact(case, chunk_rows):
    spec, params = OPTION_CASES[case]
    params = resolve_hparams(spec, params)
    check(spec, params, data_of(), "auto", chunk_rows)


def test_ld_dpo_without_the_references_shared_sums_is_refused():
    spec = get_loss("dpo")
    data = data_of()
    obj = Objective(spec, {"ld_alpha": 0.5}, rho=0.0)
    with pytest.raises(ValueError, match="ref_shared"):
        obj(tiny_model(V, seed=2, dtype=torch.float64), data, data["ref_logps"])


WPO_LOSSES = {"dpo": get_loss("dpo"), "sft": get_loss("sft")}  # per-pair (per-group dL/dsums) and batch-coupled


@pytest.mark.parametrize("name", sorted(WPO_LOSSES))
@pytest.mark.parametrize("method", ["weight", "gram", "chunked"])
@pytest.mark.parametrize("chunk_rows", CHUNKS)
@pytest.mark.parametrize("rho", [0.0, 0.3])
def test_wpo_weights_from_the_sweep_are_exact_over_chunks_methods_and_rho(name, method, chunk_rows, rho):
    """Pairs of ~12 rows: chunks of 1 and 3 rows split every pair over several chunks (swept twice), all rows
    put every pair in one chunk; ρ = 0 makes the clean sweep the gradient sweep."""
    spec = WPO_LOSSES[name]
    params = resolve_hparams(spec, {"use_weighting": True})
    data = data_of(seed=8)
    want_loss, want = brute(tiny_model(V, seed=2, dtype=torch.float64), spec, params, data, rho)
    res, got = step(spec, params, data, fused=True, rho=rho, method=method, chunk_rows=chunk_rows)
    assert res.path == "fused"
    assert abs(res.loss.item() - want_loss.item()) <= 1e-10 * abs(want_loss.item())
    assert rel_all(got, want) <= 1e-10
    unweighted, _ = brute(tiny_model(V, seed=2, dtype=torch.float64), spec, resolve_hparams(spec, {}), data, rho)
    assert abs(unweighted.item() - want_loss.item()) > 1e-3 * abs(want_loss.item())  # the weights matter


@pytest.mark.parametrize("method", ["weight", "gram", "chunked"])
@pytest.mark.parametrize("chunk_rows", CHUNKS)
@pytest.mark.parametrize("need_grads", [False, True])
def test_the_sweeps_wpo_statistic_equals_the_full_logits_one(method, chunk_rows, need_grads):
    """FusedResult.aux.aligned / lengths = TRL's aligned_logps mean from full logits, with or without a gradient
    sweep and logits-SAM (the perturbed sweep never overwrites the clean values)."""
    g = torch.Generator().manual_seed(3)
    s, t, d = 6, 9, 16
    h = torch.randn(s, t, d, generator=g, dtype=torch.float64)
    w = torch.randn(V, d, generator=g, dtype=torch.float64)
    b = torch.randn(V, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (s, t), generator=g)
    labels[:, :3] = IGNORE_INDEX
    labels[2, 5:] = IGNORE_INDEX
    want = brute_wpo(F.linear(h, w, b), labels)
    plan = plan_rows(labels, chunk_rows, ignore_index=IGNORE_INDEX)
    seen = []

    def pair_losses(pairs, sc, sr, aux):
        seen.append((pairs, aux.aligned.clone()))
        return -F.logsigmoid(sc - sr)

    job = FusedJob(plan, s // 2, pair_losses, 0.2, method, need_grads, aligned=True)
    h_r = h.reshape(-1, d)[plan.rows].requires_grad_(need_grads)
    _, res = fused_sequence_sums(h_r, w.requires_grad_(need_grads), b, job)
    lengths = (labels != IGNORE_INDEX).sum(-1)
    assert (res.aux.aligned / lengths - want).abs().max().item() <= 1e-12
    n_groups = len(plan.groups)
    assert len(seen) == (0 if not need_grads else n_groups + (1 if method == "chunked" else n_groups))
    for i, (pairs, aligned) in enumerate(seen):
        if i < n_groups:  # the clean sweep: a group's own sequences are complete when its losses are asked
            idx = torch.cat([pairs, pairs + s // 2])
            assert torch.equal(aligned[idx], res.aux.aligned[idx])
        else:  # the perturbed sweep (chunked: the vocabulary-order one) gets the clean values, all of them
            assert torch.equal(aligned, res.aux.aligned)


HEAD_PRODUCTS = {torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.addmm_, torch.ops.aten.bmm}
HEAD_PRODUCTS |= {torch.ops.aten.baddbmm, torch.ops.aten.matmul, torch.ops.aten.linear}


class HeadProducts(TorchDispatchMode):
    """Counts the matrix products that touch the vocabulary: an operand or the result has a dimension V."""

    def __init__(self):
        super().__init__()
        self.count = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in HEAD_PRODUCTS:
            shapes = [a.shape for a in (*args, *(kwargs or {}).values(), out) if isinstance(a, torch.Tensor)]
            if any(V in sh for sh in shapes):
                self.count[str(func.overloadpacket)] += 1
        return out


def head_products(params, method, rho, chunk_rows):
    spec = get_loss("dpo")
    data = data_of(seed=8)
    model = tiny_model(V, seed=2, dtype=torch.float64)
    obj = Objective(spec, resolve_hparams(spec, params), rho=rho, method=method, chunk_rows=chunk_rows)
    with HeadProducts() as spy:
        res = obj(model, data, data["ref_logps"])
        res.loss.backward()
    assert res.path == "fused"
    return spy.count


@pytest.mark.parametrize(("method", "rho"), [("weight", 0.0), ("weight", 0.3), ("gram", 0.3), ("chunked", 0.3)])
@pytest.mark.parametrize("chunk_rows", [3, ALL_ROWS])
def test_wpo_runs_no_more_head_products_than_the_plain_fused_step(method, rho, chunk_rows):
    plain = head_products({}, method, rho, chunk_rows)
    wpo = head_products({"use_weighting": True}, method, rho, chunk_rows)
    assert sum(plain.values()) > 0  # the spy sees the head
    assert wpo == plain, (dict(plain), dict(wpo))
