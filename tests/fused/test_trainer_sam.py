"""A whole trainer step with logits-SAM equals brute force in float64, for every registered loss.

Brute force: run the model for its last hidden state, clone the head, ε = ρ·∇_W L/‖∇_W L‖ by
autograd, then the loss at H (W + ε)ᵀ + b, backward into every parameter. A trainer that logged
SAM metrics but back-propagated the clean loss fails here (the test checks the two differ).
"""

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from transformers import TrainingArguments

from logitsam.config.schema import SamConfig
from logitsam.core.logprobs import IGNORE_INDEX, sequence_logps, shift_for_causal_lm, token_logps_twice_differentiable
from logitsam.core.objective import Objective, pair_logps
from logitsam.core.registry import LOSSES, resolve_hparams
from logitsam.models import tiny_model
from logitsam.training.trainer import PreferenceTrainer

V = 300


def batch(b=2, t=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (2 * b, t), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0  # right padding
    labels = ids.clone()
    labels[:, :4] = IGNORE_INDEX  # prompt
    labels[mask == 0] = IGNORE_INDEX
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "ref_logps": torch.randn(2 * b, generator=g, dtype=torch.float64) - 20,
        "score_chosen": torch.tensor([3.0, 1.0], dtype=torch.float64),
        "score_rejected": torch.tensor([1.0, 2.5], dtype=torch.float64),
    }


def brute(model, spec, params, data, rho, adaptive=False):
    m = copy.deepcopy(model)
    labels = shift_for_causal_lm(data["labels"])
    lengths = (labels != IGNORE_INDEX).sum(-1)
    ref = data["ref_logps"] if spec.needs_reference else None
    scores = (data["score_chosen"], data["score_rejected"])

    def loss_of(z):
        sums = sequence_logps(token_logps_twice_differentiable(z, labels), labels)[0]
        return spec.fn(pair_logps(sums, lengths, ref, scores), **params).losses.mean()

    hidden = m(input_ids=data["input_ids"], attention_mask=data["attention_mask"], output_hidden_states=True)
    hidden = hidden.hidden_states[-1]
    head = m.get_output_embeddings()
    w0 = head.weight.detach().clone().requires_grad_()
    (gw,) = torch.autograd.grad(loss_of(F.linear(hidden.detach(), w0, head.bias)), w0)
    if adaptive:
        gw = gw * head.weight.detach().abs()
    eps = rho * gw / gw.norm()
    loss = loss_of(F.linear(hidden, head.weight + eps, head.bias))
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in m.named_parameters()}


def grads_of(model):
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def rel_all(a, b):
    num = sum((a[k] - b[k]).norm() ** 2 for k in b) ** 0.5
    return (num / sum(v.norm() ** 2 for v in b.values()) ** 0.5).item()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("method", ["auto", "weight", "gram", "chunked"])
def test_trainer_step_is_the_sam_gradient(name, method, tmp_path):
    spec = LOSSES[name]
    params = resolve_hparams(spec, {})
    model = tiny_model(V, seed=1, dtype=torch.float64)
    data = batch()
    rho = 0.5
    want_loss, want = brute(model, spec, params, data, rho)
    _, clean = brute(model, spec, params, data, 0.0)
    assert rel_all(clean, want) > 1e-3  # the SAM gradient really differs from the clean one here

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], remove_unused_columns=False)
    tr = PreferenceTrainer(
        model=model, args=args, loss_spec=spec, loss_params=params, sam=SamConfig(rho=rho, method=method)
    )
    model.train()
    loss = tr.compute_loss(model, data)
    loss.backward()
    assert abs(loss.item() - want_loss.item()) <= 1e-10 * abs(want_loss.item())
    assert rel_all(grads_of(model), want) <= 1e-10
    metrics = {k: v[-1].item() for k, v in tr._stored["train"].items()}
    assert metrics["sam/eps_norm"] == pytest.approx(rho)
    assert metrics["sam/loss_post"] == pytest.approx(want_loss.item(), rel=1e-6)  # logged as float32


@pytest.mark.parametrize("method", ["auto", "weight", "chunked"])
def test_adaptive_trainer_step_is_the_adaptive_sam_gradient(method, tmp_path):
    spec = LOSSES["dpo"]
    params = resolve_hparams(spec, {})
    model = tiny_model(V, seed=1, dtype=torch.float64)
    data = batch()
    want_loss, want = brute(model, spec, params, data, 0.5, adaptive=True)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], remove_unused_columns=False)
    sam = SamConfig(rho=0.5, method=method, adaptive=True)
    tr = PreferenceTrainer(model=model, args=args, loss_spec=spec, loss_params=params, sam=sam)
    model.train()
    loss = tr.compute_loss(model, data)
    loss.backward()
    assert abs(loss.item() - want_loss.item()) <= 1e-10 * abs(want_loss.item())
    assert rel_all(grads_of(model), want) <= 1e-10


@pytest.mark.parametrize("method", ["weight", "gram", "chunked", "auto"])
def test_logits_path_equals_fused_path(method):
    """Objective(fused=False) (full logits: sharded heads, soft-capped logits) agrees with the fused path."""
    spec = LOSSES["dpo"]
    params = resolve_hparams(spec, {})
    data = batch(seed=3)
    out = {}
    for fused in (True, False):
        model = tiny_model(V, seed=2, dtype=torch.float64)
        res = Objective(spec, params, rho=0.3, method=method, fused=fused)(model, data, data["ref_logps"])
        res.loss.backward()
        out[fused] = (res, grads_of(model))
    assert out[True][0].path == "fused" and out[False][0].path == "logits"
    assert rel_all(out[True][1], out[False][1]) <= 1e-10
    for k, v in out[True][0].metrics.items():
        assert v.item() == pytest.approx(out[False][0].metrics[k].item(), rel=1e-6, abs=1e-9), k


def test_eval_and_reference_never_build_full_logits(monkeypatch):
    """The fused path asks the model for one position of logits only."""
    from logitsam.core.scoring import model_sequence_logps

    model = tiny_model(V, seed=4)
    data = batch(seed=4)
    seen = []
    orig = type(model).forward

    @functools.wraps(orig)
    def spy(self, *a, **k):
        seen.append(k.get("logits_to_keep"))
        return orig(self, *a, **k)

    monkeypatch.setattr(type(model), "forward", spy)
    with torch.no_grad():
        fused = model_sequence_logps(model, data["input_ids"], data["attention_mask"], data["labels"])
        logits = orig(model, input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
    labels = shift_for_causal_lm(data["labels"])
    want = sequence_logps(token_logps_twice_differentiable(logits, labels), labels)[0]
    assert seen == [1]
    assert torch.allclose(fused, want, atol=1e-4, rtol=1e-5)
