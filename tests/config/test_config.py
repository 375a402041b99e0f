"""Config loading, overrides and their errors."""

import os
import re

import pytest

from conftest import ROOT, TINY_CPU
from logitsam.config import schema as C
from logitsam.config.fields import describe_fields
from logitsam.errors import ConfigError


def test_yaml_and_overrides_roundtrip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss: {name: ipo, beta: 0.5}\nsam: {rho: 1e-4}\ntrain: {output_dir: out}\n")
    cfg = C.load(str(path))
    assert cfg.loss.name == "ipo" and cfg.loss.beta == 0.5 and cfg.sam.rho == 1e-4
    C.apply_overrides(cfg, ["--data.train_files=[a.jsonl, b.jsonl]", "--sam.rho=1e-5", "--train.max_steps=3"])
    assert cfg.data.train_files == ["a.jsonl", "b.jsonl"] and cfg.sam.rho == 1e-5 and cfg.train.max_steps == 3
    C.apply_overrides(cfg, ["--loss.beta=1"])  # int accepted for a float field
    assert cfg.loss.beta == 1.0 and isinstance(cfg.loss.beta, float)
    C.save(cfg, str(tmp_path / "saved.yaml"))  # relative data paths now read against the saved file's dir
    assert C.load(str(tmp_path / "saved.yaml")) == C.resolve_paths(cfg, str(tmp_path))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--sam.rhoo=1", "unknown key sam.rhoo"),
        ("--optim.lr=1", "unknown section 'optim'"),
        ("--train.max_steps=abc", "train.max_steps: expected int, got str"),
        ("--train.max_steps=true", "expected int, got bool"),
        ("--data.train_files={a: 1}", "expected a list"),
        ("--data.train_files=null", "expected a list"),
        ("--sam.rho", "expected --section.key=value or --section.key value"),
        ("sam.rho", "expected --section.key=value or --section.key value"),
        ("--rho=1", "expected --section.key=value"),
    ],
)
def test_bad_overrides_are_clear(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        C.apply_overrides(C.Config(), [override])


def test_space_separated_overrides():
    cfg = C.apply_overrides(
        C.Config(),
        ["--sam.rho", "-1e-4", "--train.max_steps", "-1", "--loss.name=ipo", "--train.report_to", "[none]"],
    )
    assert cfg.sam.rho == -1e-4 and cfg.train.max_steps == -1 and cfg.loss.name == "ipo"
    assert cfg.train.report_to == ["none"]
    for tokens in (["--sam.rho"], ["--sam.rho", "--train.max_steps=3"]):  # a value is missing
        with pytest.raises(ConfigError, match=r"override '--sam\.rho': expected --section\.key=value or"):
            C.apply_overrides(C.Config(), tokens)
    with pytest.raises(ConfigError, match=r"override '--sam\.rhoo 1': unknown key sam\.rhoo"):
        C.apply_overrides(C.Config(), ["--sam.rhoo", "1"])  # the error shows the override as typed


def test_one_value_where_a_list_is_expected(tmp_path):
    cfg = C.apply_overrides(C.Config(), ["--data.train_files=x.jsonl", "--train.report_to", "tensorboard"])
    assert cfg.data.train_files == ["x.jsonl"] and cfg.train.report_to == ["tensorboard"]
    assert C.apply_overrides(C.Config(), ["--model.lora_target_modules=q_proj"]).model.lora_target_modules == ["q_proj"]
    (tmp_path / "c.yaml").write_text("data:\n  train_files: x.jsonl\n  eval_files: org/set:test\n")
    cfg = C.load(str(tmp_path / "c.yaml"))
    assert cfg.data.train_files == [str(tmp_path / "x.jsonl")] and cfg.data.eval_files == ["org/set:test"]


def test_config_file_paths_resolve_against_its_directory(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    (conf / "models" / "m").mkdir(parents=True)
    (conf / "d.jsonl").write_text("")
    (conf / "c.yaml").write_text(
        "model: {name_or_path: models/m, ref_name_or_path: EleutherAI/pythia-70m}\n"
        "data:\n  train_files: [d.jsonl, ../shared/x.csv, ~/h.jsonl, /abs/y.jsonl]\n"
        "  eval_files: [org/set:test, saved_dir_that_is_nowhere]\n"
        "train: {output_dir: runs/x}\n"
    )
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    cfg = C.load("../conf/c.yaml")
    assert cfg.model.name_or_path == str(conf / "models" / "m")  # an existing dir beside the config
    assert cfg.model.ref_name_or_path == "EleutherAI/pythia-70m"  # a hub id stays one
    assert cfg.data.train_files == [
        str(conf / "d.jsonl"),
        str(tmp_path / "shared" / "x.csv"),  # not there: still resolved, so 'not found' names the real place
        os.path.expanduser("~/h.jsonl"),
        "/abs/y.jsonl",
    ]
    assert cfg.data.eval_files == ["org/set:test", "saved_dir_that_is_nowhere"]  # hub names
    assert cfg.train.output_dir == "runs/x"  # outputs go under the current directory
    C.apply_overrides(cfg, ["--data.train_files", "mine.jsonl", "--model.name_or_path=tiny-random"])
    assert cfg.data.train_files == ["mine.jsonl"]  # command-line paths: relative to the current directory
    assert C.load(str(conf / "c.yaml")).model.name_or_path == str(conf / "models" / "m")


def test_every_config_key_is_documented():
    import dataclasses

    rows = describe_fields()
    expected = [
        f"{s.name}.{f.name}" for s in dataclasses.fields(C.Config) for f in dataclasses.fields(s.default_factory)
    ]
    assert [r.key for r in rows] == expected
    for r in rows:
        assert len(r.help) > 10 and "\n" not in r.help, r.key
    by_key = {r.key: r for r in rows}
    assert (by_key["data.train_files"].type, by_key["data.train_files"].default) == ("list[str]", "[]")
    assert (by_key["train.bf16"].type, by_key["train.bf16"].default) == ("bool | None", "null")
    assert (by_key["train.report_to"].default, by_key["loss.params"].type) == ("[none]", "dict[str, Any]")
    assert by_key["train.learning_rate"].default == "5.0e-07"


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sam: {rho: [1, 2}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML"):
        C.load(str(path))
    path.write_text("sam: {speed: 1}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key sam.speed"):
        C.load(str(path))
    with pytest.raises(ConfigError, match="not found"):
        C.load(str(tmp_path / "missing.yaml"))


def test_recipes_load():
    import glob

    recipes = [p for p in glob.glob(str(ROOT / "configs" / "*.yaml")) if "accelerate" not in p]
    assert len(recipes) >= 5
    for path in recipes:
        C.load(path)


# ---- values rejected when read, naming the key ------------------------------------------------
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--train.learning_rate=.nan", "train.learning_rate: nan is not a finite number"),
        ("--train.learning_rate=-1e-5", "train.learning_rate: -1e-05 must be ≥ 0"),
        ("--sam.rho=.inf", "sam.rho: inf is not a finite number"),
        ("--sam.rho=-.inf", "sam.rho: -inf is not a finite number"),
        ("--loss.beta=.nan", "loss.beta: nan is not a finite number"),
        ("--train.per_device_train_batch_size=0", "train.per_device_train_batch_size: 0 must be > 0"),
        ("--train.per_device_eval_batch_size=-2", "train.per_device_eval_batch_size: -2 must be > 0"),
        ("--train.gradient_accumulation_steps=0", "train.gradient_accumulation_steps: 0 must be > 0"),
        ("--train.logging_steps=0", "train.logging_steps: 0 must be > 0"),
        ("--train.save_steps=-1", "train.save_steps"),
        ("--train.max_steps=0", "train.max_steps: 0 must be -1"),
        ("--train.seed=-1", "train.seed"),
        ("--data.max_length=0", "data.max_length: 0 must be > 0"),
        ("--data.max_prompt_length=-1", "data.max_prompt_length: -1 must be ≥ 0"),
        ("--data.eval_fraction=1", "data.eval_fraction: 1.0 must be in [0, 1)"),
        ("--data.eval_fraction=-0.1", "data.eval_fraction: -0.1 must be in [0, 1)"),
        ("--data.format=xml", "data.format: 'xml' is not one of auto, explicit, hh, conversational"),
        ("--train.output_dir=", "train.output_dir: '' must not be empty"),
        ("--train.output_dir=' '", "train.output_dir"),
        ("--train.report_to=['']", "train.report_to"),
        ("--train.extra={output_dir: x}", "train.extra: {'output_dir': 'x'} repeats output_dir"),
        ("--train.extra={adam_beta1: .nan}", "train.extra.adam_beta1: nan is not a finite number"),
        ("--loss.params={beta: .inf}", "loss.params.beta: inf is not a finite number"),
        ("--loss.params.gamma=.nan", "loss.params.gamma: nan is not a finite number"),
        ("--model.dtype=float8", "model.dtype: 'float8' is not one of"),
        ("--sam.mode=half", "sam.mode: 'half' is not one of logits, full"),
        ("--loss.reference=disk", "loss.reference: 'disk' is not one of"),
        ("--train.resume_from_checkpoint=''", "train.resume_from_checkpoint: '' must not be empty"),
    ],
)
def test_bad_values_are_rejected_when_read(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        C.apply_overrides(C.Config(), [override])


def test_yaml_nan_names_file_and_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {learning_rate: .nan}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: train\.learning_rate: nan is not a finite number"):
        C.load(str(path))
    with pytest.raises(ConfigError, match=r"<dict>: data\.max_length: 0 must be > 0"):
        C.from_dict({"data": {"max_length": 0}})


def test_nested_override_sets_one_entry():
    cfg = C.apply_overrides(C.Config(), ["--loss.params.gamma=0.5", "--loss.params.beta=2"])
    assert cfg.loss.params == {"gamma": 0.5, "beta": 2}
    with pytest.raises(ConfigError, match=r"unknown key sam\.rho\.x"):
        C.apply_overrides(C.Config(), ["--sam.rho.x=1"])


def test_config_path_that_is_a_directory_or_not_utf8(tmp_path):
    with pytest.raises(ConfigError, match="is a directory, not a YAML config file"):
        C.load(str(tmp_path))
    path = tmp_path / "latin.yaml"
    path.write_bytes(b"loss:\n  name: dpo # caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin\.yaml:2: not valid UTF-8 \(byte 0xe9\)"):
        C.load(str(path))
    path.write_bytes(b"\xef\xbb\xbfloss: {name: ipo}\n")  # a BOM is fine
    assert C.load(str(path)).loss.name == "ipo"


# ---- cross-field and environment checks (run.check_config / loss_setup) ------------------------
def _cfg(tmp_path, *overrides):
    cfg = C.load(TINY_CPU)
    return C.apply_overrides(cfg, [f"--train.output_dir={tmp_path / 'out'}", *overrides])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--data.max_prompt_length=128"], "data.max_prompt_length: 128 must be < data.max_length (128)"),
        (["--data.train_files=[]"], "data.train_files: give at least one training file"),
        (["--train.report_to=[wandb_nope]"], "train.report_to: unknown integration 'wandb_nope'"),
        (["--train.lr_scheduler_type=zigzag"], "train.lr_scheduler_type: 'zigzag' is not one of linear"),
        (["--train.optim=sgd_nope"], "train.optim: unknown optimizer 'sgd_nope'"),
        (["--sam.method=magic"], "sam.method: 'magic' is not one of"),
        (["--train.extra={adam_betaa: 0.9}"], "train.extra.adam_betaa: not a transformers.TrainingArguments field"),
        (["--model.name_or_path=/nonexistent/model"], "model.name_or_path: '/nonexistent/model' not found"),
        (["--model.name_or_path=./nope"], "model.name_or_path: './nope' not found"),
        (["--model.name_or_path=no such model!"], "not a local path, nor a Hugging Face model id"),
        (["--model.ref_name_or_path=/nonexistent/ref"], "model.ref_name_or_path: '/nonexistent/ref' not found"),
        (["--train.resume_from_checkpoint=/nonexistent/checkpoint-3"], "train.resume_from_checkpoint: "),
    ],
)
def test_check_config_names_the_key(tmp_path, overrides, message):
    from logitsam.training.run import check_config

    with pytest.raises(ConfigError, match=re.escape(message)):
        check_config(_cfg(tmp_path, *overrides))


def test_report_to_an_integration_that_is_not_installed(tmp_path, monkeypatch):
    from transformers.integrations import integration_utils

    from logitsam.training.run import check_config

    monkeypatch.setattr(integration_utils, "get_available_reporting_integrations", lambda: ["tensorboard"])
    check_config(_cfg(tmp_path, "--train.report_to=[tensorboard]"))  # installed: fine
    with pytest.raises(ConfigError, match=r"train\.report_to: 'wandb' is not installed"):
        check_config(_cfg(tmp_path, "--train.report_to=[wandb]"))


def test_model_paths_that_are_not_models(tmp_path):
    from logitsam.training.run import check_config

    (tmp_path / "empty").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"\0" * 8)
    for name, message in (
        ("empty", "is a directory without config.json, not a saved model"),
        ("weights.bin", "is a file, not a model directory"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            check_config(_cfg(tmp_path, f"--model.name_or_path={tmp_path / name}"))


def test_loading_a_broken_model_dir_is_a_config_error(tmp_path):
    from logitsam.config.schema import ModelConfig
    from logitsam.models import load_model, load_tokenizer

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"model\.name_or_path: cannot load a tokenizer from"):
        load_tokenizer(ModelConfig(name_or_path=str(bad)))
    with pytest.raises(ConfigError, match=r"model\.name_or_path: cannot load a causal LM from"):
        load_model(ModelConfig(name_or_path=str(bad)))


def test_output_dir_that_is_a_file_or_under_one(tmp_path):
    from logitsam.training.run import check_config

    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match=r"train\.output_dir: .* is a file, not a directory"):
        check_config(_cfg(tmp_path, f"--train.output_dir={tmp_path / 'f'}"))
    with pytest.raises(ConfigError, match=r"train\.output_dir: .* is under .*f', which is a file"):
        check_config(_cfg(tmp_path, f"--train.output_dir={tmp_path / 'f' / 'run'}"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--loss.beta=-0.1"], "loss.beta: loss 'dpo': beta = -0.1"),
        (["--loss.beta=0"], "loss.beta: loss 'dpo': beta = 0.0"),
        (["--loss.params={label_smoothing: 0.5}"], "loss.params.label_smoothing: loss 'dpo': label_smoothing = 0.5"),
        (["--loss.params={nll_mode: x}"], "loss.params.nll_mode: loss 'dpo': no hyperparameter 'nll_mode'"),
        (
            ["--loss.name=slic", "--loss.beta=null", "--loss.params.nll_mode=median"],
            "loss.params.nll_mode: loss 'slic'",
        ),
        (["--loss.name=slic", "--loss.beta=0.1"], "loss.beta: loss 'slic' has no beta"),
        (["--loss.name=dp0"], "loss.name: unknown loss 'dp0'"),
        (["--loss.beta=null", "--loss.params={beta: -1}"], "loss.params.beta: loss 'dpo'"),
    ],
)
def test_loss_setup_names_the_key(tmp_path, overrides, message):
    from logitsam.training.run import loss_setup

    with pytest.raises(ConfigError, match=re.escape(message)):
        loss_setup(_cfg(tmp_path, *overrides))


def test_loss_params_read_as_yaml_1_1_numbers(tmp_path):
    from logitsam.training.run import loss_setup

    path = tmp_path / "c.yaml"
    path.write_text("loss: {name: simpo, params: {gamma: 5e-1}}\n")  # PyYAML reads 5e-1 as a string
    assert loss_setup(C.load(str(path)))[1]["gamma"] == 0.5


# ---- values YAML reads differently than meant, sections and keys given twice or misspelt --------
def test_numbers_as_strings_inside_mappings_are_numbers(tmp_path):
    cfg = C.apply_overrides(C.Config(), ["--train.extra.adam_epsilon=1e-8", "--loss.params={gamma: 5E-1, tag: e5}"])
    assert cfg.train.extra["adam_epsilon"] == 1e-8 and isinstance(cfg.train.extra["adam_epsilon"], float)
    assert cfg.loss.params == {"gamma": 0.5, "tag": "e5"}  # only numbers: other text stays text
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  extra: {adam_beta2: 9.99e-1, lr_scheduler_kwargs: {min_lr: 1e-6}}\n")
    extra = C.load(str(path)).train.extra
    assert extra == {"adam_beta2": 0.999, "lr_scheduler_kwargs": {"min_lr": 1e-6}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train:\n  seed: 1\n  seed: 2\n", r"c\.yaml:3: duplicate key 'seed'"),
        ("loss: {name: dpo}\nloss: {name: ipo}\n", r"c\.yaml:2: duplicate key 'loss'"),
        ("loss:\n  params:\n    gamma: 1\n    gamma: 2\n", r"c\.yaml:4: duplicate key 'gamma'"),
        ("trian: {}\n", r"c\.yaml: unknown section 'trian' \(known: model, data"),
        ("1: {}\n", r"c\.yaml: unknown section 1 "),
        ("trian:\n", r"c\.yaml: unknown section 'trian'"),
        ("foo: 3\n", r"c\.yaml: unknown section 'foo'"),
        ("train: 3\n", r"c\.yaml: section 'train' must be a mapping"),
    ],
)
def test_duplicate_keys_and_unknown_sections(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        C.load(str(path))


def test_duplicate_keys_in_an_override_and_merge_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"override '--loss\.params=\{a: 1, a: 2\}': duplicate key 'a'"):
        C.apply_overrides(C.Config(), ["--loss.params={a: 1, a: 2}"])
    path = tmp_path / "c.yaml"  # a YAML merge key may be overridden: that is what it is for
    path.write_text("train:\n  extra: {<<: {adam_beta1: 0.8, adam_beta2: 0.9}, adam_beta1: 0.85}\n")
    assert C.load(str(path)).train.extra == {"adam_beta1": 0.85, "adam_beta2": 0.9}


def test_numbers_where_a_name_or_path_is_expected(tmp_path):
    cfg = C.apply_overrides(C.Config(), ["--train.output_dir=2024", "--data.train_files=[7]", "--loss.name=2.10"])
    assert (cfg.train.output_dir, cfg.data.train_files, cfg.loss.name) == ("2024", ["7"], "2.10")  # as typed
    cfg = C.apply_overrides(C.Config(), ["--train.resume_from_checkpoint=12"])
    assert cfg.train.resume_from_checkpoint == "12"
    path = tmp_path / "c.yaml"
    path.write_text("train: {output_dir: 2024}\nmodel: {name_or_path: 42}\n")
    cfg = C.load(str(path))
    assert cfg.train.output_dir == "2024" and cfg.model.name_or_path == "42"
    with pytest.raises(ConfigError, match=r"train\.output_dir: expected str, got bool"):
        C.apply_overrides(C.Config(), ["--train.output_dir=true"])
    with pytest.raises(ConfigError, match=r"train\.output_dir: expected str, got float nan"):
        C.from_dict({"train": {"output_dir": float("nan")}})  # only finite numbers read as names


def test_home_directory_is_expanded_once_when_read(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = C.apply_overrides(
        C.Config(),
        [
            "--train.output_dir=~/runs/x",
            "--data.train_files=[~/d.jsonl, rel.jsonl]",
            "--data.eval_files=~/e.jsonl",
            "--model.name_or_path=~/m",
            "--model.ref_name_or_path=~/r",
            "--train.resume_from_checkpoint=~/runs/x/checkpoint-3",
        ],
    )
    assert cfg.train.output_dir == str(tmp_path / "runs" / "x")
    assert cfg.data.train_files == [str(tmp_path / "d.jsonl"), "rel.jsonl"]
    assert cfg.data.eval_files == [str(tmp_path / "e.jsonl")]
    assert (cfg.model.name_or_path, cfg.model.ref_name_or_path) == (str(tmp_path / "m"), str(tmp_path / "r"))
    assert cfg.train.resume_from_checkpoint == str(tmp_path / "runs" / "x" / "checkpoint-3")
    path = tmp_path / "c.yaml"
    path.write_text("train: {output_dir: ~/y}\n")
    assert C.load(str(path)).train.output_dir == str(tmp_path / "y")


def test_the_same_key_twice_on_the_command_line_is_an_error(capsys):
    from logitsam import cli

    argv = ["train", "--train.learning_rate=1e-5", "--train.seed=3", "--train.learning_rate", "2e-5"]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        "logitsam: error: override '--train.learning_rate 2e-5': train.learning_rate is given twice on the command "
        "line (also '--train.learning_rate=1e-5')"
    )


@pytest.mark.parametrize("value", [" ", "", "null", "~"])
def test_an_empty_value_for_a_required_field_says_so(value):
    with pytest.raises(ConfigError, match=r"train.output_dir: (needs a str value, got an empty one \(null\)|'' )"):
        C.apply_overrides(C.Config(), [f"--train.output_dir={value}"])


def test_configs_built_in_code_get_the_same_rules(tmp_path):
    """Rules used to apply only to files and overrides: a Config changed in code skipped them."""
    from logitsam.training.preflight import check_config

    cfg = C.load(TINY_CPU)
    cfg.train.output_dir = str(tmp_path / "out")
    cfg.train.learning_rate = -1.0
    with pytest.raises(ConfigError, match=r"config: train.learning_rate: -1.0"):
        check_config(cfg)
    cfg.train.learning_rate = 1e-4
    cfg.model.dtype = "float33"
    with pytest.raises(ConfigError, match=r"config: model.dtype: 'float33'"):
        check_config(cfg)


def test_an_uncached_hub_id_with_no_network_fails_at_once(monkeypatch):
    """Without HF_HUB_OFFLINE and without a network, an uncached hub id failed after ~50 s of retries."""
    import socket
    import time

    from logitsam.models import check_model_source

    for var in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)

    def no_network(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    t = time.time()
    with pytest.raises(
        ConfigError,
        match=r"model.name_or_path: 'someone/not-cached-model' is not a local path, not in the Hugging Face cache, and the hub",
    ):
        check_model_source("someone/not-cached-model")
    assert time.time() - t < 5


def test_a_named_pipe_as_the_config_is_refused_not_read(tmp_path):
    """Opening a FIFO blocks until a writer comes: `train --config fifo` used to hang forever."""
    fifo = tmp_path / "recipe.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        C.load(str(fifo))


def test_command_line_text_is_kept_whole_where_a_field_takes_text():
    """YAML read `runs/my run #2` as `runs/my run` (a comment): the run trained into another folder."""
    cfg = C.apply_overrides(C.Config(), [
        "--train.output_dir=runs/my run #2", "--model.ref_name_or_path=ref #1 ", "--data.train_files=d #2.jsonl",
        "--train.extra.run_name=a #b", "--train.resume_from_checkpoint=runs/x #3/checkpoint-2",
    ])  # fmt: skip
    assert cfg.train.output_dir == "runs/my run #2" and cfg.model.ref_name_or_path == "ref #1 "
    assert cfg.data.train_files == ["d #2.jsonl"] and cfg.train.extra["run_name"] == "a #b"
    assert cfg.train.resume_from_checkpoint == "runs/x #3/checkpoint-2"
    cfg = C.apply_overrides(C.Config(), [
        "--model.ref_name_or_path=null", "--train.resume_from_checkpoint=true", "--train.max_steps=7",
        "--model.lora_target_modules=null", "--train.extra.adam_epsilon=1e-8", "--loss.name='ipo'",
    ])  # fmt: skip
    assert cfg.model.ref_name_or_path is None and cfg.train.resume_from_checkpoint is True
    assert cfg.train.max_steps == 7 and cfg.model.lora_target_modules is None
    assert cfg.train.extra["adam_epsilon"] == 1e-8 and cfg.loss.name == "ipo"  # a YAML-quoted value is unquoted
