"""Property tests: malformed data and configs either load or raise a UserError — nothing else.

Inputs are valid rows / configs with a few random mutations (so most reach tokenization, collation,
check_config and loss_setup), plus wholly random bytes and values. Bounded: ≤ 80 examples per test,
no deadline, no example database; the file runs in seconds.
"""

import dataclasses
import json
import os
import tempfile

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES, TINY_CPU
from logitsam.config import schema as C
from logitsam.core.registry import LOSSES
from logitsam.data.batching import PreferenceCollator, tokenize_examples
from logitsam.data.examples import load_examples
from logitsam.errors import UserError
from logitsam.models import tiny_tokenizer
from logitsam.training.run import check_config, loss_setup

SETTINGS = settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
TOKENIZER = tiny_tokenizer()

text = st.text(st.characters(exclude_categories=()), max_size=12)  # any code point, lone surrogates included
scalars = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats() | text
json_values = st.recursive(
    scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(text, kids, max_size=3), max_leaves=6
)


def mostly(common: st.SearchStrategy, rare: st.SearchStrategy, odds: int = 4) -> st.SearchStrategy:
    """``common`` ``odds`` times as often as ``rare`` (one_of weighs its branches equally)."""
    return st.integers(0, odds).flatmap(lambda i: rare if i == 0 else common)


# ---- data -------------------------------------------------------------------------------------
TEMPLATES = [
    {"prompt": "Q: hi", "chosen": " yes", "rejected": " no", "score_chosen": 2, "score_rejected": 1},
    {"chosen": "\n\nHuman: hi\n\nAssistant: yes", "rejected": "\n\nHuman: hi\n\nAssistant: no"},
    {
        "prompt": "hi",
        "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}],
        "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "no"}],
        "score_chosen": 9.0,
        "score_rejected": 3.0,
    },
    {
        "prompt": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}],
        "chosen": [{"role": "assistant", "content": "yes"}],
        "rejected": [{"role": "assistant", "content": "no"}],
    },
]
FIELDS = ("prompt", "chosen", "rejected", "score_chosen", "score_rejected")
role = st.sampled_from(["system", "user", "assistant", "bot", ""]) | json_values
message = st.fixed_dictionaries({}, optional={"role": role, "content": text | json_values})
HOSTILE_CHARS = ["\ud800", "\udfff", "\x00", "\u2028", "\u2029", "\x85", "\ufeff", "\r", "<|im_end|>", "\n\nAssistant:"]
field_value = text | json_values | st.lists(message, max_size=3) | st.sampled_from(["nan", "1e999", " ", "\u2028"])


def _strings(row: dict) -> list[tuple[object, object]]:
    """(container, key) of every text value in a row: top-level strings and message contents."""
    found = [(row, k) for k, v in row.items() if isinstance(v, str)]
    for v in row.values():
        if isinstance(v, list):
            found += [(m, "content") for m in v if isinstance(m, dict) and isinstance(m.get("content"), str)]
    return found


@st.composite
def near_valid_rows(draw):
    row = json.loads(json.dumps(draw(st.sampled_from(TEMPLATES))))
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2]))):
        kind = draw(st.sampled_from(["drop", "replace", "message", "append"]))
        key = draw(st.sampled_from(FIELDS))
        if kind == "drop":
            row.pop(key, None)
        elif kind == "replace":
            row[key] = draw(field_value)
        elif isinstance(row.get(key), list) and row[key]:
            i = draw(st.integers(0, len(row[key]) - 1))
            if kind == "message":
                row[key][i] = draw(message | json_values)
            else:
                row[key].append(draw(message))
    targets = _strings(row)
    if targets and draw(st.integers(0, 2)) > 0:  # a hostile character inside otherwise valid text
        container, key = draw(st.sampled_from(targets))
        at = draw(st.integers(0, len(container[key])))
        container[key] = container[key][:at] + draw(st.sampled_from(HOSTILE_CHARS)) + container[key][at:]
    return row


def _write(directory, name, lines):
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(b"\n".join(lines))
    return path


def _load_and_tokenize(path, fmt="auto"):
    """The pipeline on one file: load, tokenize, collate — only UserErrors may escape."""
    try:
        examples = load_examples([path], fmt)
        tokenized, _ = tokenize_examples(TOKENIZER, examples, 64, 32)
    except UserError:
        event("refused with a UserError")
        return
    event(f"loaded, {'some' if tokenized else 'no'} rows tokenized")
    if tokenized:
        batch = PreferenceCollator(TOKENIZER.eos_token_id)(tokenized)
        assert batch["input_ids"].shape[0] == 2 * len(tokenized)


def _json_line(value, ascii_only=True):
    """JSON text of ``value``: escaped (lone surrogates become \\udxxx) or raw UTF-8 (surrogates: bad bytes)."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@pytest.mark.slow
@SETTINGS
@given(
    st.lists(mostly(near_valid_rows(), json_values), min_size=1, max_size=2),
    st.sampled_from(["auto", "auto", "auto", "hh", "conversational"]),
    st.sampled_from([True, True, False]),
)
def test_malformed_rows(records, fmt, ascii_only):
    with tempfile.TemporaryDirectory() as d:
        _load_and_tokenize(_write(d, "d.jsonl", [_json_line(r, ascii_only) for r in records]), fmt)
        _load_and_tokenize(_write(d, "d.json", [_json_line({"data": records}, ascii_only)]), fmt)


@pytest.mark.slow
@SETTINGS
@given(
    st.lists(st.binary(max_size=40) | st.builds(_json_line, near_valid_rows()), max_size=4),
    st.sampled_from([".jsonl", ".json", ".csv", ".parquet", ".txt"]),
)
def test_random_bytes_files(lines, ext):
    with tempfile.TemporaryDirectory() as d:
        _load_and_tokenize(_write(d, "d" + ext, lines))


cell = st.sampled_from(["Q: hi", " yes", " no", "2", "nan", '"', "a\r\nb", "\u2028"]) | text


@pytest.mark.slow
@SETTINGS
@given(
    st.permutations(FIELDS[:3]) | st.permutations(FIELDS) | st.lists(st.sampled_from(FIELDS), min_size=1, max_size=5),
    st.lists(st.lists(cell, min_size=3, max_size=6), max_size=4),
)
def test_malformed_csv(header, rows):
    quote = lambda c: '"' + c.replace('"', '""') + '"'  # noqa: E731
    lines = [",".join(header)] + [",".join(quote(c) if i % 2 else c for i, c in enumerate(r)) for r in rows]
    with tempfile.TemporaryDirectory() as d:
        _load_and_tokenize(_write(d, "d.csv", [line.encode("utf-8", "surrogatepass") for line in lines]))


# ---- configs ----------------------------------------------------------------------------------
SECTION_FIELDS = {name: dataclasses.fields(getattr(C.Config(), name)) for name in C.SECTIONS}
HPARAMS = sorted({k for spec in LOSSES.values() for k in spec.defaults})
WORDS = ["", " ", "auto", "none", "last", "sum", "dpo", "slic", "simpo", "logits", "full", "gram", "cosine"]
WORDS += ["adamw_torch", "tiny-random", "/nonexistent", "float32", "explicit", "precomputed", "model"]
NUMBERS = st.sampled_from([0, 1, -1, 2, 0.5, 1e-4, -0.0, float("nan"), float("inf"), 2**40])
loss_params = st.dictionaries(
    st.sampled_from(HPARAMS) | text, NUMBERS | st.floats() | st.sampled_from(WORDS), max_size=3
)


def _values_for(f: dataclasses.Field) -> st.SearchStrategy:
    """Mostly values of the field's type (so checks past the type check run), sometimes anything."""
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    by_type = {
        "bool": st.booleans(),
        "int": st.integers(-3, 2000) | NUMBERS,
        "float": st.floats() | NUMBERS,
        "str": st.sampled_from(WORDS) | text,
        "list": st.lists(st.sampled_from([str(FIXTURES / "explicit.jsonl"), "none", "wandb", ""]) | text, max_size=2),
        "dict": loss_params,
        "None": st.none(),
    }
    arms = [v for k, v in by_type.items() if k in str(f.type)]  # every arm of e.g. "str | bool | None"
    return mostly(st.one_of(arms) if arms else st.just(default), json_values)


KEYS = [(s, f) for s, fields in SECTION_FIELDS.items() for f in fields]


def _base() -> dict:
    with open(TINY_CPU, encoding="utf-8") as f:
        return yaml.safe_load(f)


@st.composite
def near_valid_configs(draw):
    data = _base()
    for _ in range(draw(st.integers(0, 4))):
        section, f = draw(st.sampled_from(KEYS))
        data.setdefault(section, {})[f.name] = draw(_values_for(f))
    if draw(st.integers(0, 9)) == 0:  # an unknown or malformed section
        data[draw(st.sampled_from(list(C.SECTIONS)) | text)] = draw(json_values)
    return data


def _check_all(cfg):
    with tempfile.TemporaryDirectory() as d:  # never let a random config point at the real tree
        cfg.train.output_dir = os.path.join(d, "out")
        try:
            check_config(cfg)
            loss_setup(cfg)
            event("config accepted")
        except UserError as e:
            event(f"refused by check_config/loss_setup ({str(e).split(':')[0]})")


@pytest.mark.slow
@SETTINGS
@given(near_valid_configs() | json_values)
def test_malformed_config_dicts(data):
    try:
        cfg = C.from_dict(data, "random.yaml")
    except UserError:
        event("refused by from_dict")
        return
    _check_all(cfg)


def _yaml_text(v) -> str:
    return v if isinstance(v, str) else yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("\n...")


# transformers.TrainingArguments fields a recipe passes through train.extra, and values for them
EXTRA_FIELDS = ["adam_beta1", "adam_beta2", "adam_epsilon", "lr_scheduler_kwargs", "save_strategy", "eval_strategy"]
EXTRA_FIELDS += ["deepspeed", "push_to_hub", "optim_args", "logging_strategy", "warmup_ratio", "fp16", "tf32"]
EXTRA_VALUES = st.sampled_from(
    ["1e-8", "5.0", "-1", "bogus", "[1]", "{min_lr: 1e-6}", "{x: 1}", "true", "null", "/nope.json"]
)


@st.composite
def override(draw):
    if draw(st.integers(0, 9)) == 0:
        return draw(text)  # not even --section.key=value
    if draw(st.integers(0, 4)) == 0:
        key = draw(st.sampled_from([f"loss.params.{h}" for h in HPARAMS]) | text)
        return f"--{key}={_yaml_text(draw(NUMBERS | st.sampled_from(WORDS)))}"
    if draw(st.integers(0, 4)) == 0:  # checked by preflight: TrainingArguments built on trial
        return f"--train.extra.{draw(st.sampled_from(EXTRA_FIELDS))}={draw(EXTRA_VALUES | st.sampled_from(WORDS))}"
    section, f = draw(st.sampled_from(KEYS))
    tricky = st.sampled_from(
        ["[1, 2", "{a: b}", "!!binary aGk=", "2024-01-01", "&a [*a]", "!!python/object:os.system x"]
    )
    raw = draw(st.one_of(_values_for(f).map(_yaml_text), tricky))
    return f"--{section}.{f.name}={raw}"


@pytest.mark.slow
@SETTINGS
@given(st.lists(override(), max_size=4))
def test_malformed_overrides(items):
    cfg = C.load(TINY_CPU)
    try:
        C.apply_overrides(cfg, items)
    except UserError:
        event("refused by apply_overrides")
        return
    _check_all(cfg)


HOSTILE_VALUES = [
    float("nan"),
    float("inf"),
    -1,
    0,
    2**70,
    -0.5,
    "",
    " ",
    "x",
    True,
    False,
    None,
    [],
    [""],
    {},
    {"a": 1},
]


@pytest.mark.slow
def test_every_key_with_every_hostile_value():
    """Exhaustive single-key mutations of the tiny recipe: each is accepted or a UserError."""
    outcomes = {"accepted": 0, "refused": 0}
    with tempfile.TemporaryDirectory() as d:
        for section, f in KEYS:
            for v in HOSTILE_VALUES:
                data = _base()
                data.setdefault(section, {})[f.name] = v
                try:
                    cfg = C.from_dict(data, "hostile.yaml")
                    if section != "train" or f.name != "output_dir":
                        cfg.train.output_dir = os.path.join(d, "out")
                    check_config(cfg)
                    loss_setup(cfg)
                    outcomes["accepted"] += 1
                except UserError:
                    outcomes["refused"] += 1
    assert outcomes["accepted"] > 50 and outcomes["refused"] > 300  # both paths really ran


def test_a_lock_path_that_is_not_a_file_is_refused_untouched(tmp_path):
    from logitsam.errors import ConfigError
    from logitsam.training.rundir import RunLock

    (tmp_path / ".logitsam.lock").mkdir()
    with pytest.raises(ConfigError, match=r"lock path .* is a directory"):
        RunLock(str(tmp_path)).acquire()
    assert (tmp_path / ".logitsam.lock").is_dir() and len(list(tmp_path.iterdir())) == 1  # nothing renamed


@pytest.mark.parametrize("kind", ["file", "unwritable"])
def test_an_unusable_cache_is_one_error_naming_the_variable(tmp_path, monkeypatch, kind):
    import os

    from logitsam.errors import ConfigError
    from logitsam.models import cache_dir

    path = tmp_path / "cache"
    if kind == "file":
        path.write_text("x")
    else:
        path.mkdir()
        os.chmod(path, 0o500)
        if os.access(path, os.W_OK):  # root ignores permissions
            pytest.skip("running as root: permissions are not enforced")
    monkeypatch.setenv("LOGITSAM_CACHE", str(path))
    with pytest.raises(ConfigError, match="LOGITSAM_CACHE: cannot use"):
        cache_dir()


@pytest.mark.slow
@pytest.mark.parametrize("code", ["ENOSPC", "EROFS"])
def test_a_full_or_read_only_disk_is_one_line_and_releases_the_lock(tmp_path, monkeypatch, capsys, code):
    import errno

    from transformers import Trainer

    from logitsam import cli

    def refuse(self, *args, **kwargs):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(tmp_path / "run" / "checkpoint-1"))

    monkeypatch.setattr(Trainer, "_save_checkpoint", refuse)
    argv = ["train", "--config", TINY_CPU, f"--train.output_dir={tmp_path / 'run'}",
            "--train.max_steps=2", "--train.save_steps=1", "--train.eval_steps=null", "--train.print_logs=false"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err  # progress bars share stderr: the error is one line, no traceback
    assert err.count("logitsam: error: the disk refused a write") == 1 and "Traceback" not in err
    assert "--train.resume_from_checkpoint=last" in err
    assert not (tmp_path / "run" / ".logitsam.lock").exists()
