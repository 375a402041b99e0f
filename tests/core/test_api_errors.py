"""The Python API names what is wrong with its arguments instead of failing deep inside (or not at all)."""

import pytest
import torch
from transformers import TrainingArguments

from logitsam.config import SamConfig
from logitsam.core.objective import Objective
from logitsam.core.registry import LOSSES, resolve_hparams
from logitsam.models import tiny_model
from logitsam.sam.logits import logits_sam_loss, perturbed_logits
from logitsam.trainer import PreferenceTrainer

H, W = torch.randn(6, 4), torch.randn(10, 4)
G = torch.randn(6, 10)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(rho=float("nan")), "finite"),
        (dict(rho=float("inf")), "finite"),
        (dict(rho="0.1"), "finite"),
        (dict(rho=0.1, method="chunked", block=-1), "block"),
        (dict(rho=0.1, method="chunked", block=0), "block"),
        (dict(rho=0.1, method="gram", block=-5), "block"),
        (dict(rho=0.1, bias=torch.randn(12)), "bias"),
        (dict(rho=0.1, method="gram", logits=torch.randn(6, 11)), "logits"),
        (dict(rho=0.1, bias=torch.randn(10).double()), "bias is torch.float64: give both in one dtype"),
        (dict(rho=0.1, method="gram", logits=torch.randn(6, 10).double()), "logits is torch.float64"),
    ],
)
def test_perturbed_logits_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        perturbed_logits(H, W, G, **kwargs)


@pytest.mark.parametrize(
    ("hidden", "weight", "match"),
    [
        (torch.randn(6, 5), W, "d=5"),
        (H.double(), W, "dtype|float64"),
        (torch.randint(0, 3, (6, 4)), W, "floating"),
        (H, torch.randn(10), "weight"),
        (H.numpy(), W, "floating"),
    ],
)
def test_perturbed_logits_names_shape_and_dtype_mismatches(hidden, weight, match):
    with pytest.raises(ValueError, match=match):
        perturbed_logits(hidden, weight, G, rho=0.1)


@pytest.mark.parametrize("method", ["weight", "gram", "chunked"])
def test_perturbed_logits_takes_the_gradient_in_any_floating_dtype(method):
    """grad_logits in another float dtype than hidden/weight is computed in theirs (once a RuntimeError
    from the matmul), equal to the same-dtype call; a non-float gradient is named."""
    same = perturbed_logits(H, W, G, rho=0.1, method=method)
    for g in (G.double(), G.bfloat16().float()):
        assert torch.allclose(
            perturbed_logits(H, W, g, rho=0.1, method=method), perturbed_logits(H, W, g.float(), rho=0.1, method=method)
        )
    assert torch.allclose(perturbed_logits(H, W, G.double(), rho=0.1, method=method), same, atol=1e-6)
    with pytest.raises(ValueError, match="grad_logits must be a floating tensor"):
        perturbed_logits(H, W, G.long(), rho=0.1, method=method)
    with pytest.raises(ValueError, match="grad_logits must be a floating tensor"):
        perturbed_logits(H, W, G.tolist(), rho=0.1, method=method)


@pytest.mark.parametrize("bad", [lambda z: z.sum(-1), lambda z: 1.0, lambda z: torch.tensor(1.0)])
def test_logits_sam_loss_needs_a_scalar_loss_of_the_logits(bad):
    with pytest.raises(ValueError, match="scalar"):
        logits_sam_loss(bad, H, W, rho=0.1)
    with pytest.raises(ValueError, match="weight or the clean logits"):
        logits_sam_loss(lambda z: z.sum(), H, None, rho=0.1)


def pair_batch(s=4, t=8, v=300):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, v, (s, t), generator=g)
    labels = ids.clone()
    labels[:, :3] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda b: b.update(labels=b["labels"][:, :5]), "labels"),
        (lambda b: b.update(labels=b["labels"][:2]), "labels"),
        (lambda b: b.update({k: v[:3] for k, v in b.items()}), "2B sequences"),
        (lambda b: b.update(labels=torch.full_like(b["labels"], -100)), "scored"),
        (lambda b: b["labels"].__setitem__((0, 5), 400), r"\[0, 300\)"),
        (lambda b: b["labels"].__setitem__((0, 5), -1), r"\[0, 300\)"),
        (lambda b: b.update(labels=b["labels"].float()), "integer"),
        (lambda b: b.pop("attention_mask"), "attention_mask"),
        (lambda b: b.update(score_chosen=torch.ones(5), score_rejected=torch.ones(5)), "score_chosen"),
        (lambda b: b.update(score_chosen=[1.0, 2.0], score_rejected=torch.ones(2)), "score_chosen.*got list"),
        (lambda b: b.update(score_chosen=torch.ones(2), score_rejected="0.5"), "score_rejected.*got str"),
    ],
)
@pytest.mark.parametrize("fused", [True, False])
def test_objective_checks_the_batch(edit, match, fused):
    model = tiny_model(300)
    batch = pair_batch()
    edit(batch)
    spec = LOSSES["dpo"]
    with pytest.raises(ValueError, match=match):
        Objective(spec, resolve_hparams(spec, {}), fused=fused)(model, batch, torch.zeros(4))


def test_objective_checks_reference_and_settings():
    model, spec = tiny_model(300), LOSSES["dpo"]
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        Objective(spec, {})(model, pair_batch(), torch.zeros(3))
    for kwargs, match in [
        (dict(rho=float("nan")), "finite"),
        (dict(chunk_rows=-1), "chunk_rows"),
        (dict(chunk_rows=0), "chunk_rows"),
        (dict(method="fast"), "method"),
    ]:
        with pytest.raises(ValueError, match=match):
            Objective(spec, {}, **kwargs)
    with pytest.raises(ValueError, match="beta"):
        Objective(spec, {"beta": -1.0})


@pytest.mark.parametrize(
    ("sam", "error", "match"),
    [
        (SamConfig(rho=1e-2, mode="Full"), ValueError, "sam.mode: 'Full' is not one of logits, full"),
        (SamConfig(rho=True), ValueError, "rho must be a finite number"),
        (SamConfig(rho=1e-2, method="grammm"), ValueError, "unknown logits-SAM method 'grammm'"),
        ({"rho": 1e-2, "mod": "full"}, ValueError, "sam: unknown key 'mod'"),
        ("full", TypeError, "sam must be a logitsam.config.SamConfig, a dict or None, got str"),
    ],
)
def test_preference_trainer_checks_sam_as_the_cli_does(tmp_path, sam, error, match):
    """The Python API used to train with no SAM and no error for mode='Full'; None or a dict crashed."""
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    with pytest.raises(error, match=match):
        PreferenceTrainer(model=tiny_model(300), args=args, loss_spec=LOSSES["dpo"], loss_params={}, sam=sam)


def test_preference_trainer_accepts_none_a_dict_and_default_training_arguments(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])  # remove_unused_columns=True
    tr = PreferenceTrainer(model=tiny_model(300), args=args, loss_spec=LOSSES["dpo"], loss_params={}, sam=None)
    assert tr.sam.rho == 0 and tr.args.remove_unused_columns is False
    tr = PreferenceTrainer(model=tiny_model(300), args=args, loss_spec=LOSSES["dpo"], loss_params={}, sam={"rho": 1e-3})
    assert tr.sam.rho == 1e-3 and tr.objective.rho == 1e-3


@pytest.mark.parametrize("pad", [None, -1, 1.5, True, "0"])
def test_collators_need_a_pad_token_id(pad):
    from logitsam.data.batching import PreferenceCollator
    from logitsam.training.sft import SFTCollator

    for collator in (PreferenceCollator, SFTCollator):
        with pytest.raises(ValueError, match="needs the tokenizer's pad token id"):
            collator(pad)


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([], "got no rows"),
        ([{"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3]}], "rows lack index"),
        ([{"prompt": "x", "chosen": "y", "rejected": "z"}], "rows lack prompt_ids, chosen_ids, rejected_ids, index"),
    ],
)
def test_preference_collator_names_what_its_rows_lack(rows, match):
    """An empty batch or untokenized rows used to be `max() arg is an empty sequence` / `KeyError: 'index'`."""
    from logitsam.data.batching import PreferenceCollator

    with pytest.raises(ValueError, match=match):
        PreferenceCollator(0)(rows)


@pytest.mark.parametrize(("field", "value"), [("chosen", None), ("rejected", 3), ("prompt", None)])
def test_a_preference_example_built_in_code_names_a_bad_field(field, value):
    from logitsam.data.examples import PreferenceExample

    row = {"prompt": "p", "chosen": "a", "rejected": "b", field: value}
    with pytest.raises(ValueError, match=rf"PreferenceExample\.{field} must be"):
        PreferenceExample(**row)
