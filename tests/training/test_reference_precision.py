"""The reference follows the policy's precision (issue 34): fp32 weights with the policy's forward under
accelerate's bf16 autocast (``TrainingArguments(bf16=True)``) run every head-sized product of a training
step — the policy's fused sweep, the reference model's own forward and its fused log-probs — in bf16,
counted by a dispatch-mode spy below autograd and autocast; fp32 training stays fp32; the cached reference
(computed once under the same autocast) equals the live one bit for bit."""

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import TrainingArguments

from conftest import FIXTURES
from logitsam.config.schema import SamConfig
from logitsam.core.registry import LOSSES, resolve_hparams
from logitsam.data.batching import PreferenceCollator, tokenize_examples
from logitsam.data.examples import load_examples
from logitsam.models import tiny_model, tiny_tokenizer
from logitsam.training.reference import compute_reference_logps
from logitsam.training.trainer import PreferenceTrainer

aten = torch.ops.aten
PRODUCTS = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default}


class HeadProducts(TorchDispatchMode):
    """Counts matrix products with an operand of ``vocab`` in its shape, by the dtype they compute in."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab, self.seen = vocab, Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in PRODUCTS:
            ts = [a for a in args if isinstance(a, torch.Tensor)]
            if any(self.vocab in t.shape for t in ts):
                self.seen[ts[-1].dtype] += 1  # the second factor: every operand shares its dtype
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def rows():
    tok = tiny_tokenizer()
    out, _ = tokenize_examples(tok, load_examples([str(FIXTURES / "explicit.jsonl")])[:4], 512, 384)
    return out, tok.eos_token_id, len(tok)


def _trainer(tmp_path, bf16: bool, rho: float, vocab: int):
    spec = LOSSES["dpo"]
    args = TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, bf16=bf16, report_to=[], remove_unused_columns=False
    )
    tr = PreferenceTrainer(
        model=tiny_model(vocab, seed=1), args=args, loss_spec=spec, loss_params=resolve_hparams(spec, {}),
        sam=SamConfig(rho=rho), ref_model=tiny_model(vocab, seed=2),
    )  # fmt: skip
    tr.model = tr.accelerator.prepare_model(tr.model)  # what Trainer.train() does: the forward wrapped in autocast
    tr.create_optimizer()
    tr.current_gradient_accumulation_steps = 1  # set by Trainer.train() per step
    return tr


@pytest.mark.parametrize("rho", [0.0, 1e-2])
@pytest.mark.parametrize("bf16", [True, False])
def test_every_head_product_of_a_step_runs_in_the_policys_precision(tmp_path, rows, bf16, rho):
    data, pad, vocab = rows
    tr = _trainer(tmp_path, bf16, rho, vocab)
    batch = PreferenceCollator(pad)(data[:2])
    with HeadProducts(vocab) as spy:
        loss = tr.training_step(tr.model, batch)
    assert torch.isfinite(loss)
    want = torch.bfloat16 if bf16 else torch.float32
    # policy: z, dH, dW (+ the head check, + SAM's ingredient, shift and its backward); reference: its
    # forward's last position, the head check, the fused sweep
    assert set(spy.seen) == {want}, dict(spy.seen)
    assert spy.seen[want] >= (9 if rho else 6), dict(spy.seen)
    assert tr.model.lm_head.weight.grad.dtype == torch.float32  # weights stay fp32


def test_the_cached_reference_equals_the_live_one_under_autocast(tmp_path, rows):
    data, pad, vocab = rows
    tr = _trainer(tmp_path, True, 0.0, vocab)
    batch = PreferenceCollator(pad)(data)
    live = tr.reference_logps(tr.model, batch).float()
    cached = compute_reference_logps(tr.ref_model, data, pad, batch_size=len(data), autocast=torch.bfloat16)
    assert torch.equal(torch.cat([cached[:, 0], cached[:, 1]]), live)
    fp32 = compute_reference_logps(tr.ref_model, data, pad, batch_size=len(data))
    assert not torch.equal(fp32, cached)  # the autocast is really on: fp32 values differ in the last bits
