"""Host syncs of one training step of the objective (issue 18): metrics stay on the device, logits-SAM adds none.

A host sync is every call that needs a tensor's value on the host (``item``, ``tolist``, ``bool``,
``int``, ``float``, ``nonzero``, ``cpu``, ``numpy``); on a GPU each one stalls the launch queue. The
class methods are wrapped, so syncs inside autograd backward and in any module are counted too.
What remains is named: the row plan of the fused head (scored rows: a data-dependent shape, one
``nonzero`` and one ``tolist``), the label check (one ``tolist``) and the fused backward's check that
the incoming gradient is the predicted one (one ``bool``). Syncs inside the model's own forward
(transformers' attention-mask checks) are the model's, not counted.
"""

import collections
import traceback

import pytest
import torch

from logitsam.core.objective import Objective
from logitsam.core.registry import LOSSES, resolve_hparams
from logitsam.models import tiny_model

V = 300
SYNCING = ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero", "cpu", "numpy")


@pytest.fixture
def syncs(monkeypatch):
    """Counter of (method, logitsam file:function) for every host-syncing Tensor call made under logitsam."""
    seen: collections.Counter = collections.Counter()
    for name in SYNCING:
        orig = getattr(torch.Tensor, name)

        def wrapped(self, *a, _orig=orig, _name=name, **k):
            caller = [f for f in traceback.extract_stack()[:-1] if "/torch/" not in f.filename][-1]
            if "/logitsam/" in caller.filename:  # ours (a model's own forward, e.g. transformers' mask checks, is not)
                seen[(_name, f"{caller.filename.rsplit('/logitsam/', 1)[1]}:{caller.name}")] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    return seen


def _batch(b=2, t=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (2 * b, t), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}, torch.randn(2 * b) - 20


EXPECTED = {  # the named syncs of one fused step (module docstring)
    ("nonzero", "fused/row_plan.py:plan_rows"): 1,
    ("tolist", "fused/row_plan.py:plan_rows"): 1,
    ("tolist", "core/objective.py:check_labels"): 1,
    ("__bool__", "fused/head.py:backward"): 1,
}


@pytest.mark.parametrize(("rho", "method"), [(0.0, "auto"), (1e-2, "weight"), (1e-2, "gram"), (1e-2, "auto")])
def test_a_fused_step_syncs_only_where_named(syncs, rho, method):
    model = tiny_model(V)
    obj = Objective(LOSSES["dpo"], resolve_hparams(LOSSES["dpo"], {}), rho=rho, method=method)
    batch, ref = _batch()
    obj(model, batch, ref)  # the first call checks the head once (a sync): not a training step's cost
    syncs.clear()
    res = obj(model, batch, ref)
    res.loss.backward()
    assert res.path == "fused" and set(res.metrics) >= {"rewards/margins", "probs/top_token"}
    assert (rho != 0) == ("sam/grad_norm" in res.metrics)
    assert all(isinstance(v, torch.Tensor) for v in res.metrics.values())  # metrics stay tensors
    assert dict(syncs) == EXPECTED


def test_the_counter_sees_a_sync(syncs):
    """The fixture is live: a metric read on the host inside logitsam is counted (the test can fail)."""
    obj = Objective(LOSSES["dpo"], resolve_hparams(LOSSES["dpo"], {}))
    batch, ref = _batch()
    res = obj(tiny_model(V), batch, ref)
    syncs.clear()
    res.metrics["rewards/margins"].item()  # called from the test file: not under logitsam, not counted
    assert not syncs
    from logitsam.core.objective import check_labels

    check_labels(batch["labels"][:, 1:], V)
    assert syncs[("tolist", "core/objective.py:check_labels")] == 1
