"""Registered losses the fused head must not get wrong (issue 31): a loss coupling the batch's pairs
(normalised or sorted across it) and a loss that ignores one side, with logits-SAM over several chunks,
against brute force and the full-logits path in float64."""

import pytest
import torch
import torch.nn.functional as F
from test_trainer_sam import V, batch, brute, grads_of, rel_all

from logitsam import losses as L
from logitsam.core.losses import LossOutput, PreferenceLogps
from logitsam.core.objective import Objective
from logitsam.core.registry import BUILTIN, _probe
from logitsam.models import tiny_model


def normalised(inp: PreferenceLogps, *, beta: float = 0.5) -> LossOutput:
    """A sigmoid loss on margins standardised across the batch: every pair's loss depends on every pair."""
    m = beta * (inp.chosen - inp.rejected)
    m = (m - m.mean()) / (m.std(correction=0) + 1.0)
    return LossOutput(-F.logsigmoid(m), inp.chosen.detach(), inp.rejected.detach())


def aot(inp: PreferenceLogps, *, beta: float = 0.1) -> LossOutput:
    """TRL's ``aot``: chosen and rejected log-ratios sorted across the batch, then paired by rank."""
    dc, dr = inp.logratios()
    losses = -F.logsigmoid(beta * (torch.sort(dc).values - torch.sort(dr).values))
    return LossOutput(losses, (beta * dc).detach(), (beta * dr).detach())


def chosen_nll(inp: PreferenceLogps, *, weight: float = 1.0) -> LossOutput:
    """Token-mean NLL of the chosen response only: the rejected log-probs never reach the loss."""
    return LossOutput(-weight * inp.chosen_mean(), inp.chosen.detach(), inp.rejected.detach())


def per_pair(inp: PreferenceLogps, *, beta: float = 0.5) -> LossOutput:
    return LossOutput(-F.logsigmoid(beta * (inp.chosen - inp.rejected)), inp.chosen.detach(), inp.rejected.detach())


LOSS_FNS = {"normalised": (normalised, False), "my_aot": (aot, True), "chosen_nll": (chosen_nll, False)}


@pytest.fixture
def register():
    names = []

    def make(name, fn=None, needs_reference=None, **kw):
        f, ref = LOSS_FNS.get(name, (fn, False))
        names.append(name)
        return L.register_loss(name, fn or f, needs_reference=ref if needs_reference is None else needs_reference, **kw)

    yield make
    for n in names:
        L.unregister_loss(n)


def test_registration_finds_coupling_and_the_sides_a_loss_uses(register):
    assert (register("normalised").batch_coupled, register("my_aot").batch_coupled) == (True, True)
    spec = register("chosen_nll")
    assert not spec.batch_coupled and spec.uses == ("chosen",)
    spec = register("per_pair", per_pair)
    assert not spec.batch_coupled and spec.uses == ("chosen", "rejected")
    assert register("declared", per_pair, batch_coupled=True).batch_coupled  # a coupling the probe cannot see
    coupled = {"aot", "aot_unpaired", "sft"}  # TRL's sorting losses and its batch-wide token-mean NLL
    for spec in map(L.get_loss, BUILTIN):  # the built-ins' flags are what the probe finds
        assert _probe(spec) == (spec.batch_coupled, spec.uses), spec.name
        assert spec.batch_coupled == (spec.name in coupled), spec.name
        assert spec.uses == (("chosen",) if spec.name == "sft" else ("chosen", "rejected")), spec.name
    rows = {r.loss: r.summary for r in L.describe_losses()}
    assert "chosen only" in rows["chosen_nll"] and "couples the batch's pairs" in rows["my_aot"]


def _step(spec, data, *, fused, rho, method, chunk_rows):
    model = tiny_model(V, seed=2, dtype=torch.float64)
    ref = data["ref_logps"] if spec.needs_reference else None
    res = Objective(spec, {}, rho=rho, method=method, fused=fused, chunk_rows=chunk_rows)(model, data, ref)
    res.loss.backward()
    return res, grads_of(model)


# b = 3 pairs of ~10 scored rows: 4 rows split every pair, 12 give each pair a chunk, 25 put two in one
@pytest.mark.parametrize("name", ["normalised", "my_aot", "chosen_nll"])
@pytest.mark.parametrize("method", ["weight", "gram", "chunked"])
@pytest.mark.parametrize("chunk_rows", [4, 12, 25])
def test_logits_sam_step_over_several_chunks_is_exact(register, name, method, chunk_rows):
    spec = register(name)
    data = batch(b=3, seed=6)
    data["score_chosen"] = data["score_rejected"] = None
    want_loss, want = brute(tiny_model(V, seed=2, dtype=torch.float64), spec, {}, data, 0.3)
    res, got = _step(spec, data, fused=True, rho=0.3, method=method, chunk_rows=chunk_rows)
    assert res.path == "fused"
    assert abs(res.loss.item() - want_loss.item()) <= 1e-10 * abs(want_loss.item())
    assert rel_all(got, want) <= 1e-10
    logits_res, logits_grads = _step(spec, data, fused=False, rho=0.3, method=method, chunk_rows=None)
    assert rel_all(got, logits_grads) <= 1e-10
    for key in ("sam/loss_pre", "sam/loss_post", "sam/grad_norm"):
        assert res.metrics[key].item() == pytest.approx(logits_res.metrics[key].item(), rel=1e-6), key


def test_a_chosen_only_loss_trains_without_sam_over_several_chunks(register):
    """Before: the fused head's per-chunk autograd.grad raised on the unused rejected log-probs."""
    spec = register("chosen_nll")
    data = batch(b=3, seed=4)
    data["score_chosen"] = data["score_rejected"] = None
    want_loss, want = brute(tiny_model(V, seed=2, dtype=torch.float64), spec, {}, data, 0.0)
    res, got = _step(spec, data, fused=True, rho=0.0, method="auto", chunk_rows=12)
    assert abs(res.loss.item() - want_loss.item()) <= 1e-10 * abs(want_loss.item())
    assert rel_all(got, want) <= 1e-10
