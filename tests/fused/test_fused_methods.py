"""The fused head's method table (fused/methods.py): a new logits-SAM method is one class implementing
``Perturbation`` and one row; the head runs it against brute force with no other edit."""

import pytest
import torch
from test_fused_head import brute, check, fused, make

from logitsam.core.registry import LOSSES, resolve_hparams
from logitsam.fused import FUSED_METHODS, FusedMethod, choose_fused_method, fused_method_costs
from logitsam.fused.methods import check_fused_method
from logitsam.sam.costs import Cost


class DenseEps:
    """A toy method: ε's direction held as a dense float64 (V, d) tensor under its own name, every
    product written out plainly (no ``g`` attribute, so the head must use its ``norm_sq``)."""

    def __init__(self, h: torch.Tensor, v: int, dtype: torch.dtype) -> None:
        self.h = h.detach().double()
        self.direction = torch.zeros(v, h.shape[1], dtype=torch.float64)
        self.scale = None

    def accumulate(self, s, e, dz):
        self.direction += dz.to(torch.float64).T @ self.h[s:e]

    def norm_sq(self, acc):
        return self.direction.square().sum().to(acc)

    def add_shift(self, z, s, e, h):
        return z + (self.scale * (h[s:e].double() @ self.direction.T)).to(z.dtype)

    def shift_back(self, dz, acc):
        return (self.scale * (dz.to(torch.float64) @ self.direction)).to(acc)


@pytest.fixture
def toy_row(monkeypatch):
    monkeypatch.setitem(
        FUSED_METHODS, "toy", FusedMethod(DenseEps, lambda n_r, d, v, b: Cost(1.0, 0.0), adaptive=False)
    )


@pytest.mark.parametrize("name", ["dpo", "ipo"])
@pytest.mark.parametrize("rho", [0.5, -0.5])
@pytest.mark.parametrize("chunk_rows", [1, 4, 10_000])
def test_a_new_method_is_one_class_and_one_row(toy_row, name, rho, chunk_rows):
    spec = LOSSES[name]
    params = resolve_hparams(spec, {})
    h, w, b, labels, ref, scores = make(seed=11)
    want = brute(spec, params, h, w, b, labels, ref, scores, rho)
    loss, *grads, res = fused(spec, params, h, w, b, labels, ref, scores, rho, "toy", chunk_rows)
    check([loss, *grads], list(want))
    assert res.method_used == "toy"
    assert res.grad_norm is not None and res.grad_norm > 0  # ‖g‖ came from the row's norm_sq


def test_auto_reads_the_table(toy_row):
    assert "toy" in fused_method_costs(64, 32, 100, 4)
    assert choose_fused_method(64, 32, 100, 4) == "toy"  # its row says it is cheapest
    assert choose_fused_method(64, 32, 100, 4, adaptive=True) != "toy"  # it cannot scale by |W|


def test_unknown_and_non_adaptive_methods_are_refused(toy_row):
    spec = LOSSES["dpo"]
    params = resolve_hparams(spec, {})
    h, w, b, labels, ref, scores = make(seed=3)
    with pytest.raises(ValueError, match="unknown logits-SAM method 'nope'"):
        fused(spec, params, h, w, b, labels, ref, scores, 0.5, "nope", 4)
    with pytest.raises(ValueError, match="which toy never forms"):
        check_fused_method("toy", adaptive=True)
    with pytest.raises(ValueError, match="use weight, chunked or auto"):
        check_fused_method("gram", adaptive=True)
