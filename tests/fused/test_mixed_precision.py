"""The fused head under mixed precision (issue 18): a float32 model whose forward accelerate wraps in bf16
autocast (``TrainingArguments(bf16=True)`` -> ``prepare_model``, as ``Trainer.train()`` and TRL do) keeps
the fused path, runs its head-sized products in bf16, and still rejects soft-capped logits."""

import pytest
import torch
import torch.nn.functional as F
from transformers import TrainingArguments

from logitsam.config.schema import SamConfig
from logitsam.core.forward import unwrap
from logitsam.core.objective import Objective
from logitsam.core.registry import LOSSES, resolve_hparams
from logitsam.models import tiny_model
from logitsam.training.trainer import PreferenceTrainer

V = 300


def _batch(b=2, t=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (2 * b, t), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "ref_logps": torch.randn(2 * b, generator=g) - 20}  # fmt: skip


def _trainer(tmp_path, model, rho=1e-2):
    spec = LOSSES["dpo"]
    args = TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, bf16=True, report_to=[], remove_unused_columns=False
    )
    tr = PreferenceTrainer(
        model=model, args=args, loss_spec=spec, loss_params=resolve_hparams(spec, {}), sam=SamConfig(rho=rho)
    )
    tr.model = tr.accelerator.prepare_model(tr.model)  # what Trainer.train() does: forward wrapped in autocast
    return tr


@pytest.fixture
def head_products(monkeypatch):
    """dtypes of every F.linear whose output is vocabulary-sized (the head's products)."""
    seen = []
    real = F.linear

    def spy(x, w, b=None):
        if w.shape[0] == V or x.shape[-1] == V:  # the dtype it computes in: autocast's when on
            amp = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
            seen.append((amp or x.dtype, amp or w.dtype))
        return real(x, w, b)

    monkeypatch.setattr(F, "linear", spy)
    return seen


@pytest.mark.parametrize("rho", [0.0, 1e-2])
def test_accelerate_bf16_keeps_the_fused_path_in_bf16(tmp_path, head_products, rho, caplog):
    model = tiny_model(V, seed=1)  # float32 weights
    tr = _trainer(tmp_path, model, rho)
    model.train()
    loss = tr.compute_loss(tr.model, _batch())
    loss.backward()
    assert unwrap(tr.model)._logitsam_fused_ok is True  # the head check passed: no fallback to full logits
    assert "not a plain linear head" not in caplog.text
    assert head_products, "no head-sized product seen"
    assert all(x == torch.bfloat16 and w == torch.bfloat16 for x, w in head_products), head_products
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.dtype == torch.float32
    # the loss is the fp32 one up to bf16 rounding of the products
    ref = tiny_model(V, seed=1)
    want = Objective(LOSSES["dpo"], resolve_hparams(LOSSES["dpo"], {}), rho=rho)(ref, _batch(), _batch()["ref_logps"])
    assert loss.item() == pytest.approx(want.loss.item(), abs=2e-2)


def test_without_autocast_the_products_stay_in_the_weights_dtype(head_products):
    model = tiny_model(V, seed=1)
    out = Objective(LOSSES["dpo"], resolve_hparams(LOSSES["dpo"], {}))(model, _batch(), _batch()["ref_logps"])
    out.loss.backward()
    assert unwrap(model)._logitsam_fused_ok is True
    assert head_products and all(x == torch.float32 for x, _ in head_products)


def test_soft_capped_logits_still_fall_back_under_autocast(tmp_path):
    model = tiny_model(V, seed=1)
    model.lm_head.weight.data *= 40  # logits of size ~10, so a soft cap changes them

    class Capped(type(model)):  # Gemma-2-style soft-capped logits, the forward still takes logits_to_keep
        def forward(self, *a, logits_to_keep=0, **k):
            out = super().forward(*a, logits_to_keep=logits_to_keep, **k)
            out.logits = 5.0 * torch.tanh(out.logits / 5.0)
            return out

    model.__class__ = Capped
    tr = _trainer(tmp_path, model)
    tr.compute_loss(tr.model, _batch())
    assert unwrap(tr.model)._logitsam_fused_ok is False


@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16])
def test_head_gradient_in_vocabulary_blocks_equals_one_product(monkeypatch, amp):
    """fp32 weights under autocast: dW is accumulated in vocabulary blocks (no whole (V, d) product in two
    more dtypes); with blocks of 7 rows it equals the one-block result."""
    from logitsam.sam import common

    grads = []
    for entries in (common.BLOCK_ENTRIES, 7 * 32):  # tiny_model's d = 32: 7 rows per block
        monkeypatch.setattr(common, "BLOCK_ENTRIES", entries)
        model = tiny_model(V, seed=1)
        with torch.autocast("cpu", dtype=amp):
            out = Objective(LOSSES["dpo"], resolve_hparams(LOSSES["dpo"], {}), rho=1e-2)(
                model, _batch(), _batch()["ref_logps"]
            )
        out.loss.backward()
        assert out.path == "fused"
        grads.append(model.lm_head.weight.grad.clone())
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", ["weight", "gram", "chunked", "auto"])
def test_full_logits_path_with_logits_sam_under_autocast_runs_in_the_heads_precision(head_products, method):
    """Called inside autocast (a user's loop), the full-logits path's logits-SAM computes its head
    products in bf16 like the model's head (it refused 'hidden is float32 but logits is bfloat16' before);
    the loss and head gradient are the fp32 ones up to bf16 rounding, and the fused path's under the same
    autocast."""
    spec, batch = LOSSES["dpo"], _batch()
    ref = batch.pop("ref_logps")
    got = {}
    for fused in (False, True):
        model = tiny_model(V, seed=1)
        head_products.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = Objective(spec, {}, rho=0.3, method=method, fused=fused)(model, batch, ref)
        out.loss.backward()
        assert out.path == ("fused" if fused else "logits")
        assert head_products and all(x == torch.bfloat16 for x, _ in head_products), head_products
        got[fused] = out.loss.item(), model.lm_head.weight.grad.clone()
    model = tiny_model(V, seed=1)
    want = Objective(spec, {}, rho=0.3, method=method, fused=False)(model, batch, ref)
    want.loss.backward()
    for loss, grad in got.values():
        assert loss == pytest.approx(want.loss.item(), abs=2e-2)
        assert (grad - model.lm_head.weight.grad).norm() <= 5e-2 * model.lm_head.weight.grad.norm()
    assert got[False][0] == pytest.approx(got[True][0], abs=2e-3)
