"""Parity with TRL on the same tiny model and the same token batches (TRL is a test-only dependency).

What is compared: TRL collates and tokenizes; the identical token batch (converted to our layout)
goes through our PreferenceTrainer.compute_loss. Loss and every parameter gradient must agree to
1e-5 (relative for gradients). Losses: DPOTrainer 'sigmoid'/'ipo'/'hinge' vs our dpo/ipo/hinge;
experimental CPOTrainer 'sigmoid' (CPO) and 'simpo' vs our cpo/simpo.
Intended difference, tested separately: TRL's CPO NLL term is a token mean over the whole batch;
ours is per example (paper Table 5: summed; nll_mode='mean': per-example token mean). The two agree
exactly when the chosen responses have equal length, which the NLL test arranges.
"""

import copy
import json
import logging

import pytest
import torch

from conftest import FIXTURES
from logitsam.config.schema import SamConfig
from logitsam.core.logprobs import IGNORE_INDEX
from logitsam.core.registry import get_loss, resolve_hparams
from logitsam.models import tiny_model, tiny_tokenizer

pytestmark = pytest.mark.slow  # trains or launches processes: `pytest -m 'not slow'` skips it

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")
logging.getLogger("transformers").setLevel(logging.ERROR)


def rows(n=4):
    with open(str(FIXTURES / "explicit.jsonl")) as f:
        return [json.loads(line) for line in f][:n]


def ours(model, batch, loss, ref=None, **params):
    """Our loss and gradients on ``batch``; ``ref`` is the frozen reference for reference-based losses."""
    from transformers import TrainingArguments

    from logitsam.training.trainer import PreferenceTrainer

    spec = get_loss(loss)
    args = TrainingArguments(output_dir="/tmp/logitsam-parity", use_cpu=True, report_to=[], remove_unused_columns=False)
    tr = PreferenceTrainer(
        model=model,
        args=args,
        loss_spec=spec,
        loss_params=resolve_hparams(spec, params),
        sam=SamConfig(rho=0.0),
        ref_model=ref,
    )
    model.train()
    value = tr.compute_loss(model, batch)
    value.backward()
    return value.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def close(a, b):
    assert abs(a[0].item() - b[0].item()) <= 1e-5 * max(1.0, abs(b[0].item()))
    for name, g in b[1].items():
        assert (a[1][name] - g).norm() <= 1e-5 * g.norm() + 1e-9, name


def perturb_model(model):
    """Move the policy away from the reference so rewards and margins are non-zero."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize(("trl_loss", "our_loss"), [("sigmoid", "dpo"), ("ipo", "ipo"), ("hinge", "hinge")])
def test_dpo_trainer_parity(trl_loss, our_loss, tmp_path):
    tok = tiny_tokenizer()
    tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    base = tiny_model(len(tok), seed=0)
    policy = perturb_model(copy.deepcopy(base))
    cfg = trl.DPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        use_cpu=True,
        report_to=[],
        loss_type=[trl_loss],
        beta=0.1,
        max_length=None,
        bf16=False,
    )
    tr = trl.DPOTrainer(
        model=copy.deepcopy(policy),
        ref_model=copy.deepcopy(base),
        args=cfg,
        train_dataset=datasets.Dataset.from_list(rows()),
        processing_class=tok,
    )
    batch = next(iter(tr.get_train_dataloader()))
    tr.model.train()
    loss = tr.compute_loss(tr.model, batch)
    loss.backward()
    theirs = (loss.detach(), {n: p.grad.clone() for n, p in tr.model.named_parameters()})
    converted = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "labels": batch["input_ids"].masked_fill(batch["completion_mask"] == 0, IGNORE_INDEX),
    }
    assert trl_loss != "sigmoid" or abs(theirs[0].item() - 0.6931) > 1e-3  # policy ≠ reference: non-trivial
    ref = copy.deepcopy(base).eval().requires_grad_(False)
    close(ours(copy.deepcopy(policy), converted, our_loss, ref=ref, beta=0.1), theirs)


def cpo_batch_to_ours(batch):
    def pad(t, width, value):
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    width = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])
    cat = lambda k, v: torch.cat([pad(batch[f"chosen_{k}"], width, v), pad(batch[f"rejected_{k}"], width, v)])  # noqa: E731
    return {
        "input_ids": cat("input_ids", 0),
        "attention_mask": cat("attention_mask", 0),
        "labels": cat("labels", IGNORE_INDEX),
    }


def run_cpo(tmp_path, data, trl_kwargs, our_loss, our_params, kind="cpo"):
    """TRL's CPO (or ORPO, ``kind="orpo"``: same batch format) trainer's loss and gradients on one batch, and ours."""
    if kind == "orpo":
        from trl.experimental.orpo import ORPOConfig as CPOConfig
        from trl.experimental.orpo import ORPOTrainer as CPOTrainer
    else:
        from trl.experimental.cpo import CPOConfig, CPOTrainer

    tok = tiny_tokenizer()
    tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    policy = perturb_model(tiny_model(len(tok), seed=0))
    cfg = CPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=len(data),
        use_cpu=True,
        report_to=[],
        max_length=512,
        bf16=False,
        **trl_kwargs,
    )
    tr = CPOTrainer(
        model=copy.deepcopy(policy), args=cfg, train_dataset=datasets.Dataset.from_list(data), processing_class=tok
    )
    batch = next(iter(tr.get_train_dataloader()))
    tr.model.train()
    loss = tr.compute_loss(tr.model, batch)
    loss.backward()
    theirs = (loss.detach(), {n: p.grad.clone() for n, p in tr.model.named_parameters()})
    return ours(copy.deepcopy(policy), cpo_batch_to_ours(batch), our_loss, **our_params), theirs


def test_cpo_trainer_parity_preference_term(tmp_path):
    mine, theirs = run_cpo(
        tmp_path,
        rows(),
        {"loss_type": "sigmoid", "beta": 0.1, "cpo_alpha": 0.0},
        "cpo",
        {"beta": 0.1, "nll_weight": 0.0},
    )
    close(mine, theirs)


def test_simpo_parity(tmp_path):
    mine, theirs = run_cpo(
        tmp_path,
        rows(),
        {"loss_type": "simpo", "beta": 2.0, "simpo_gamma": 0.5, "cpo_alpha": 0.0},
        "simpo",
        {"beta": 2.0, "gamma": 0.5},
    )
    close(mine, theirs)


def test_cpo_nll_term_matches_when_lengths_are_equal(tmp_path):
    data = [
        {"prompt": "Q: one?\nA:", "chosen": " first answer", "rejected": " no"},
        {"prompt": "Q: two, please?\nA:", "chosen": " other answer", "rejected": " nope, not that"},
    ]
    mine, theirs = run_cpo(
        tmp_path,
        data,
        {"loss_type": "sigmoid", "beta": 0.1, "cpo_alpha": 1.0},
        "cpo",
        {"beta": 0.1, "nll_weight": 1.0, "nll_mode": "mean"},
    )
    close(mine, theirs)


def test_orpo_trainer_parity(tmp_path):
    """ORPO's odds-ratio term against TRL's ORPOTrainer (value and every gradient) on one batch.

    TRL adds the NLL of the whole chosen sequence, prompt included ("computed over the full prompt and
    response"); ORPO's paper, and we, take the response's token-mean NLL per pair (hand values in
    test_losses). So TRL's loss and gradients minus that full-sequence cross-entropy (recomputed here
    as TRL does) must equal our odds-ratio term, registered below as a loss of its own."""
    import torch.nn.functional as F
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    from logitsam.core.losses import LossOutput
    from logitsam.core.registry import register_loss, unregister_loss

    def odds_only(inp, *, beta: float = 0.1):
        out = get_loss("orpo").fn(inp, beta=beta)
        return LossOutput(out.losses + inp.chosen_mean(), out.chosen_rewards, out.rejected_rewards)

    tok = tiny_tokenizer()
    tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    policy = perturb_model(tiny_model(len(tok), seed=0))
    cfg = ORPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, use_cpu=True, report_to=[], max_length=512, beta=0.25
    )
    tr = ORPOTrainer(
        model=copy.deepcopy(policy), args=cfg, train_dataset=datasets.Dataset.from_list(rows()), processing_class=tok
    )
    batch = next(iter(tr.get_train_dataloader()))
    model = tr.model.train()
    loss = tr.compute_loss(model, batch)
    logits = model(batch["chosen_input_ids"], attention_mask=batch["chosen_attention_mask"]).logits
    labels = torch.where(batch["chosen_attention_mask"] == 1, batch["chosen_input_ids"], -100)
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
    (loss - nll).backward()
    theirs = ((loss - nll).detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    register_loss("orpo_odds_only", odds_only, needs_reference=False, length_normalized=True)
    try:
        mine = ours(copy.deepcopy(policy), cpo_batch_to_ours(batch), "orpo_odds_only", beta=0.25)
    finally:
        unregister_loss("orpo_odds_only")
    assert theirs[0].item() > 0.01  # a non-trivial term
    close(mine, theirs)
