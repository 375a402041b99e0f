"""with_logits_sam(TRL trainer): our objective inside TRL's DPOTrainer / CPOTrainer (TRL is a test-only dependency).

- ρ ≠ 0, float64: loss and every gradient equal PreferenceTrainer.compute_loss with the same SamConfig (1e-10),
  and differ from the ρ = 0 gradients (so a ρ that never reached the objective fails);
- ρ = 0: loss, gradients and reward metrics equal TRL's own trainer;
- references: precomputed log-probs and PEFT adapters disabled; settings without a counterpart are refused;
- a few real ``train()`` steps log ``sam/*`` through TRL's metric store, evaluation included.
"""

import copy
import json
import logging
import math

import pytest
import torch

from logitsam.config.schema import SamConfig
from logitsam.core.logprobs import IGNORE_INDEX
from logitsam.core.registry import get_loss, resolve_hparams
from logitsam.models import tiny_model, tiny_tokenizer

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")
from conftest import FIXTURES  # noqa: E402
from logitsam.integrations.trl import UnsupportedTrlSetting, trl_loss, with_logits_sam  # noqa: E402

pytestmark = pytest.mark.slow  # trains or launches processes: `pytest -m 'not slow'` skips it

logging.getLogger("transformers").setLevel(logging.ERROR)
EQUAL_LENGTHS = [
    {"prompt": "Q: one?\nA:", "chosen": " first answer", "rejected": " no"},
    {"prompt": "Q: two, please?\nA:", "chosen": " other answer", "rejected": " nope, not that"},
]


def rows(n=4):
    with open(str(FIXTURES / "explicit.jsonl")) as f:
        return [json.loads(line) for line in f][:n]


def tokenizer():
    tok = tiny_tokenizer()
    tok.pad_token = tok.eos_token
    return tok


def models(dtype):
    """(reference, policy): the policy moved away from the reference so rewards are non-zero."""
    base = tiny_model(len(tokenizer()), seed=0, dtype=dtype)
    policy = copy.deepcopy(base)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return base, policy


def cpo_classes():
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    return CPOConfig, CPOTrainer


def dpo_trainer(cls, tmp_path, base, policy, data=None, sam=None, eval_data=None, **cfg):
    cfg = {"per_device_train_batch_size": 4, "use_cpu": True, "report_to": [], "max_length": None, "bf16": False, **cfg}
    args = trl.DPOConfig(output_dir=str(tmp_path), **cfg)
    kw = {} if sam is None else sam
    return cls(
        model=copy.deepcopy(policy),
        ref_model=copy.deepcopy(base),
        args=args,
        train_dataset=datasets.Dataset.from_list(data or rows()),
        eval_dataset=eval_data and datasets.Dataset.from_list(eval_data),
        processing_class=tokenizer(),
        **kw,
    )


def cpo_trainer(cls, tmp_path, policy, data, sam=None, eval_data=None, **cfg):
    CPOConfig, _ = cpo_classes()
    cfg = {
        "per_device_train_batch_size": len(data),
        "use_cpu": True,
        "report_to": [],
        "max_length": 512,
        "bf16": False,
        **cfg,
    }
    args = CPOConfig(output_dir=str(tmp_path), **cfg)
    kw = {} if sam is None else sam
    return cls(
        model=copy.deepcopy(policy),
        args=args,
        train_dataset=datasets.Dataset.from_list(data),
        eval_dataset=eval_data and datasets.Dataset.from_list(eval_data),
        processing_class=tokenizer(),
        **kw,
    )


def step(tr, batch):
    """Loss and every parameter gradient of one compute_loss on ``batch``."""
    tr.model.train()
    loss = tr.compute_loss(tr.model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in tr.model.named_parameters() if p.requires_grad}


def ours(policy, batch, loss, ref=None, sam=None, **params):
    """PreferenceTrainer.compute_loss (the reference implementation) on a batch in our layout."""
    from transformers import TrainingArguments

    from logitsam.training.trainer import PreferenceTrainer

    spec = get_loss(loss)
    args = TrainingArguments(
        output_dir="/tmp/logitsam-trl-int", use_cpu=True, report_to=[], remove_unused_columns=False
    )
    model = copy.deepcopy(policy)
    tr = PreferenceTrainer(
        model=model,
        args=args,
        loss_spec=spec,
        loss_params=resolve_hparams(spec, params),
        sam=sam or SamConfig(),
        ref_model=ref,
    )
    model.train()
    loss = tr.compute_loss(model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def from_dpo(batch):  # written here, not imported: the test checks the integration's own conversion
    return {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "labels": batch["input_ids"].masked_fill(batch["completion_mask"] == 0, IGNORE_INDEX),
    }


def from_cpo(batch, pad):
    width = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])

    def cat(k, v):
        return torch.cat(
            [
                torch.nn.functional.pad(batch[f"{s}_{k}"], (0, width - batch[f"{s}_{k}"].shape[1]), value=v)
                for s in ("chosen", "rejected")
            ]
        )

    return {
        "input_ids": cat("input_ids", pad),
        "attention_mask": cat("attention_mask", 0),
        "labels": cat("labels", IGNORE_INDEX),
    }


def rel(a, b):
    """Largest relative difference of losses and of gradients (norm over each parameter)."""
    worst = abs(a[0].item() - b[0].item()) / max(abs(b[0].item()), 1e-12)
    for name, g in b[1].items():
        worst = max(worst, ((a[1][name] - g).norm() / (g.norm() + 1e-30)).item())
    return worst


RHO = 0.5  # large, so the SAM gradient differs clearly from the clean one on the tiny model


@pytest.mark.parametrize(("trl_loss_type", "loss"), [("sigmoid", "dpo"), ("ipo", "ipo"), ("hinge", "hinge")])
def test_dpo_with_sam_equals_preference_trainer(trl_loss_type, loss, tmp_path):
    base, policy = models(torch.float64)
    tr = dpo_trainer(
        with_logits_sam(trl.DPOTrainer), tmp_path, base, policy, sam={"rho": RHO}, loss_type=[trl_loss_type], beta=0.1
    )
    batch = next(iter(tr.get_train_dataloader()))
    mine = step(tr, batch)
    ref = copy.deepcopy(base).eval().requires_grad_(False)
    want = ours(policy, from_dpo(batch), loss, ref=ref, sam=SamConfig(rho=RHO), beta=0.1)
    clean = ours(policy, from_dpo(batch), loss, ref=ref, beta=0.1)
    assert rel(mine, want) <= 1e-10
    assert rel(mine, clean) > 1e-3  # ρ really reached the objective
    assert tr._metrics["train"]["sam/eps_norm"] == [pytest.approx(RHO)]
    assert tr._metrics["train"]["sam/loss_post"][0] > tr._metrics["train"]["sam/loss_pre"][0]


@pytest.mark.parametrize(
    ("cfg", "loss", "params", "data"),
    [
        (
            {"loss_type": "sigmoid", "beta": 0.1, "cpo_alpha": 1.0},
            "cpo",
            {"beta": 0.1, "nll_weight": 1.0, "nll_mode": "mean"},
            None,
        ),
        (
            {"loss_type": "simpo", "beta": 2.0, "simpo_gamma": 0.5, "cpo_alpha": 0.0},
            "simpo",
            {"beta": 2.0, "gamma": 0.5},
            None,
        ),
    ],
    ids=["cpo", "simpo"],
)
def test_cpo_with_sam_equals_preference_trainer(cfg, loss, params, data, tmp_path):
    _, CPOTrainer = cpo_classes()
    _, policy = models(torch.float64)
    tr = cpo_trainer(
        with_logits_sam(CPOTrainer), tmp_path, policy, rows(), sam={"rho": RHO, "sam_method": "gram"}, **cfg
    )
    batch = next(iter(tr.get_train_dataloader()))
    mine = step(tr, batch)
    converted = from_cpo(batch, tr.pad_token_id)
    want = ours(policy, converted, loss, sam=SamConfig(rho=RHO, method="gram"), **params)
    assert rel(mine, want) <= 1e-10
    assert rel(mine, ours(policy, converted, loss, **params)) > 1e-3
    assert tr._stored_metrics["train"]["sam/eps_norm"] == [pytest.approx(RHO)]


def trl_metric(store, key):
    return store[key][-1]


@pytest.mark.parametrize("trl_loss_type", ["sigmoid", "ipo", "hinge"])
def test_dpo_rho_zero_equals_trl(trl_loss_type, tmp_path):
    base, policy = models(torch.float64)
    theirs = dpo_trainer(trl.DPOTrainer, tmp_path / "t", base, policy, loss_type=[trl_loss_type], beta=0.1)
    mine = dpo_trainer(
        with_logits_sam(trl.DPOTrainer),
        tmp_path / "m",
        base,
        policy,
        sam={"rho": 0.0},
        loss_type=[trl_loss_type],
        beta=0.1,
    )
    batch = next(iter(theirs.get_train_dataloader()))
    a, b = step(mine, batch), step(theirs, batch)
    assert trl_loss_type != "sigmoid" or abs(b[0].item() - 0.6931) > 1e-3  # policy ≠ reference: non-trivial
    assert rel(a, b) <= 1e-6, rel(a, b)
    # Rewards are β·(difference of sums of ~100 log-probs), and TRL's fused head sums in float32: abs 1e-5.
    # IPO's rewards are logitsam's β·length-normalised log-ratios (what its loss uses); TRL logs unnormalised ones.
    keys = ["logps/chosen", "logps/rejected"] + ["rewards/chosen", "rewards/rejected", "rewards/margins"] * (
        trl_loss_type != "ipo"
    )
    for key in keys:
        assert trl_metric(mine._metrics["train"], key) == pytest.approx(
            trl_metric(theirs._metrics["train"], key), rel=1e-6, abs=1e-5
        ), key
    assert "sam/eps_norm" not in mine._metrics["train"]


@pytest.mark.parametrize(
    ("cfg", "data"),
    [
        ({"loss_type": "sigmoid", "beta": 0.1, "cpo_alpha": 0.0}, None),
        ({"loss_type": "sigmoid", "beta": 0.1, "cpo_alpha": 1.0}, EQUAL_LENGTHS),  # NLL: batch == per-pair token mean
        ({"loss_type": "simpo", "beta": 2.0, "simpo_gamma": 0.5, "cpo_alpha": 0.0}, None),
    ],
    ids=["cpo", "cpo-nll", "simpo"],
)
def test_cpo_rho_zero_equals_trl(cfg, data, tmp_path):
    _, CPOTrainer = cpo_classes()
    _, policy = models(torch.float64)
    data = data or rows()
    theirs = cpo_trainer(CPOTrainer, tmp_path / "t", policy, data, **cfg)
    mine = cpo_trainer(with_logits_sam(CPOTrainer), tmp_path / "m", policy, data, sam={"rho": 0.0}, **cfg)
    batch = next(iter(theirs.get_train_dataloader()))
    a, b = step(mine, batch), step(theirs, batch)
    assert rel(a, b) <= 1e-6, rel(a, b)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert trl_metric(mine._stored_metrics["train"], key) == pytest.approx(
            trl_metric(theirs._stored_metrics["train"], key), rel=1e-5
        ), key


def test_precomputed_reference_equals_ref_model(tmp_path):
    base, policy = models(torch.float32)
    cls = with_logits_sam(trl.DPOTrainer)
    pre = dpo_trainer(cls, tmp_path / "p", base, policy, sam={"rho": 1e-3}, precompute_ref_log_probs=True)
    live = dpo_trainer(cls, tmp_path / "l", base, policy, sam={"rho": 1e-3})
    batch = next(iter(pre.get_train_dataloader()))
    assert "ref_chosen_logps" in batch
    live_batch = {k: v for k, v in batch.items() if not k.startswith("ref_")}
    pre.ref_model = None  # the precomputed log-probs must be what is read
    a, b = step(pre, batch), step(live, live_batch)
    assert rel(a, b) <= 1e-5
    assert pre._metrics["train"]["logps/chosen_drift"][0] != 0.0


def test_peft_reference_is_the_policy_without_adapters(tmp_path):
    from peft import LoraConfig

    base, _ = models(torch.float32)
    args = trl.DPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, use_cpu=True, report_to=[], max_length=None, bf16=False
    )
    tr = with_logits_sam(trl.DPOTrainer)(
        model=copy.deepcopy(base),
        args=args,
        train_dataset=datasets.Dataset.from_list(rows()),
        processing_class=tokenizer(),
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
        rho=1e-3,
    )
    assert tr.ref_model is None
    loss, _ = step(tr, next(iter(tr.get_train_dataloader())))
    logged = tr._metrics["train"]
    # a fresh LoRA is the identity: policy == reference, exactly
    assert logged["logps/chosen_drift"] == [0.0] and logged["rewards/margins"] == [0.0]
    assert logged["sam/loss_pre"][0] == pytest.approx(math.log(2), abs=1e-6)
    assert loss.item() > logged["sam/loss_pre"][0] + 1e-4  # the returned loss is at W + ε


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        ({"padding_free": True}, "padding_free"),
        ({"loss_type": ["nca_pair"], "f_divergence_type": "js_divergence"}, "f_divergence_type"),  # TRL refuses too
        ({"loss_type": ["aot"], "use_weighting": True}, "use_weighting"),  # TRL refuses too
        ({"loss_type": ["robust"], "label_smoothing": 0.5}, "label_smoothing"),  # TRL divides by 1 − 2ε = 0
        ({"loss_type": ["exo_pair"]}, "label_smoothing"),  # TRL refuses ε = 0 too (log ε)
        ({"ld_alpha": 1.5}, "ld_alpha"),
        ({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, -1.0]}, "loss_weights"),
        ({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0]}, "loss_weights"),
    ],
)
def test_unsupported_dpo_settings_are_refused(cfg, field, tmp_path):
    args = trl.DPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    for key, value in cfg.items():  # DPOConfig's own checks run in __post_init__ only
        setattr(args, key, value)
    with pytest.raises(UnsupportedTrlSetting, match=field):
        trl_loss("dpo", args)


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        ({"loss_type": "hinge"}, "loss_type"),
        ({"loss_type": "simpo", "cpo_alpha": 1.0}, "cpo_alpha"),
        ({"alpha": 0.5}, "alpha"),
        ({"label_smoothing": 0.1}, "label_smoothing"),
    ],
)
def test_unsupported_cpo_settings_are_refused(cfg, field, tmp_path):
    CPOConfig, _ = cpo_classes()
    with pytest.raises(UnsupportedTrlSetting, match=field):
        trl_loss("cpo", CPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, **cfg))


def test_mapping_and_constructor_checks(tmp_path):
    CPOConfig, CPOTrainer = cpo_classes()
    spec, params = trl_loss("dpo", trl.DPOConfig(output_dir=str(tmp_path), use_cpu=True, beta=0.3, loss_type="ipo"))
    assert (spec.name, params["beta"], params["ld_alpha"], params["use_weighting"]) == ("ipo", 0.3, 1.0, False)
    args = trl.DPOConfig(output_dir=str(tmp_path), use_cpu=True, loss_type="sigmoid", label_smoothing=0.2, ld_alpha=0.5)
    spec, params = trl_loss("dpo", args)  # TRL 1.16's sigmoid ignores label_smoothing (that is 'robust')
    assert (spec.name, params["label_smoothing"], params["ld_alpha"]) == ("dpo", 0.0, 0.5)
    args.loss_type, args.loss_weights = ["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0]
    spec, params = trl_loss("dpo", args)  # MPO: one weighted loss, its terms' hyperparameters bound
    assert (spec.name, params, spec.batch_coupled) == ("0.8*dpo+0.2*bco_pair+1*sft", {}, True)
    assert [p.get("ld_alpha") for _, _, p in spec.parts] == [0.5, 0.5, None]
    spec, params = trl_loss("cpo", CPOConfig(output_dir=str(tmp_path), use_cpu=True, cpo_alpha=0.7))
    assert (spec.name, params) == ("cpo", {"beta": 0.1, "nll_weight": 0.7, "nll_mode": "mean"})
    assert with_logits_sam(CPOTrainer) is with_logits_sam(CPOTrainer)  # one class per TRL trainer
    assert issubclass(with_logits_sam(trl.DPOTrainer), trl.DPOTrainer)
    with pytest.raises(UnsupportedTrlSetting, match="neither"):
        with_logits_sam(trl.SFTTrainer)
    base, policy = models(torch.float32)
    with pytest.raises(UnsupportedTrlSetting, match="sam_method"):
        dpo_trainer(with_logits_sam(trl.DPOTrainer), tmp_path, base, policy, sam={"sam_method": "nope"})
    with pytest.raises(UnsupportedTrlSetting, match="padding_free"):  # refused before TRL prepares the data
        dpo_trainer(with_logits_sam(trl.DPOTrainer), tmp_path, base, policy, padding_free=True)


def test_three_train_steps_log_sam_metrics_through_trl(tmp_path):
    base, policy = models(torch.float32)
    data = rows(8)
    tr = dpo_trainer(
        with_logits_sam(trl.DPOTrainer),
        tmp_path,
        base,
        policy,
        data=data[:6],
        eval_data=data[6:],
        sam={"rho": 1e-4},
        per_device_train_batch_size=2,
        per_device_eval_batch_size=2,
        max_steps=3,
        logging_steps=1,
        learning_rate=1e-3,
        eval_strategy="steps",
        eval_steps=3,
        save_strategy="no",
    )
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    tr.train()
    train_logs = [r for r in tr.state.log_history if "loss" in r]
    eval_logs = [r for r in tr.state.log_history if "eval_loss" in r]
    assert [r["step"] for r in train_logs] == [1, 2, 3]
    for r in train_logs:
        assert r["sam/eps_norm"] == pytest.approx(1e-4)
        assert r["sam/loss_post"] >= r["sam/loss_pre"] > 0
        assert "rewards/margins" in r and "logps/chosen_drift" in r
    assert train_logs[0]["logps/chosen_drift"] != 0.0  # the policy starts away from the reference
    assert len(eval_logs) == 1 and "eval_rewards/margins" in eval_logs[0]
    assert not any(k.startswith("eval_sam/") for k in eval_logs[0])  # no SAM while evaluating
    assert any((p.detach() - before[n]).abs().max() > 0 for n, p in tr.model.named_parameters())


def test_cpo_train_and_evaluate_log_through_trl(tmp_path):
    _, CPOTrainer = cpo_classes()
    _, policy = models(torch.float32)
    data = rows(6)
    tr = cpo_trainer(
        with_logits_sam(CPOTrainer),
        tmp_path,
        policy,
        data[:4],
        sam={"rho": 1e-4},
        eval_data=data[4:],
        per_device_train_batch_size=2,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
    )
    tr.train()
    train_logs = [r for r in tr.state.log_history if "loss" in r]
    assert len(train_logs) == 2 and all(r["sam/eps_norm"] == pytest.approx(1e-4) for r in train_logs)
    metrics = tr.evaluate()
    assert "eval_rewards/margins" in metrics and "eval_sam/eps_norm" not in metrics
    assert metrics["eval_loss"] > 0
