"""TRL's loss types and options through the fused head with logits-SAM, against brute force in float64.

- the batch-coupled ones (``aot`` and ``aot_unpaired`` sort across the batch, ``sft`` is one token mean over
  the batch): chunks of 1 row, 3 rows and all rows, every SAM method;
- LD-DPO (the sweep sums shared parts and tails as separate sequences), WPO (clean weights from a head
  product over the scored rows, held fixed under logits-SAM) and an MPO weighted sum with both.
Brute force: full logits, ε = ρ·∇_W L/‖∇_W L‖ by autograd, the loss at H(W + ε)ᵀ, backward; the shared sums
from the shared labels and WPO's weights from the clean logits by plain torch ops.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from test_trainer_sam import V, batch, grads_of, rel_all

from logitsam.core.combined import combine_losses, extra_inputs
from logitsam.core.extras import shared_labels
from logitsam.core.logprobs import IGNORE_INDEX, sequence_logps, shift_for_causal_lm, token_logps_twice_differentiable
from logitsam.core.objective import Objective, pair_logps
from logitsam.core.registry import get_loss, resolve_hparams
from logitsam.models import tiny_model

ALL_ROWS = 10**6


def data_of(seed=6):
    d = batch(b=3, seed=seed)
    d["score_chosen"] = d["score_rejected"] = None
    d["labels"][1, 4:7] = IGNORE_INDEX  # chosen and rejected lengths differ: LD-DPO's tails are not empty
    d["labels"][5, 4:6] = IGNORE_INDEX
    d["ref_shared"] = d["ref_logps"] + 0.5 * torch.rand(
        6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    return d


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
        lp = torch.log_softmax(F.linear(hidden, head.weight, head.bias).detach(), -1)
        aligned = lp.gather(-1, labels.clamp(min=0)[..., None])[..., 0] - torch.logsumexp(2 * lp, -1)
        extra["wpo"] = sequence_logps(aligned, labels)[0] / lengths

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
@pytest.mark.parametrize("chunk_rows", [1, 3, ALL_ROWS])
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
@pytest.mark.parametrize("chunk_rows", [1, 3, ALL_ROWS])
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
