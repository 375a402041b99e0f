"""Config loading, overrides and their errors."""

import pytest

from logitsam import config as C
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
    C.save(cfg, str(tmp_path / "saved.yaml"))
    assert C.load(str(tmp_path / "saved.yaml")) == cfg


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--sam.rhoo=1", "unknown key sam.rhoo"),
        ("--optim.lr=1", "unknown section 'optim'"),
        ("--train.max_steps=abc", "train.max_steps: expected int, got str"),
        ("--train.max_steps=true", "expected int, got bool"),
        ("--data.train_files=x.jsonl", "expected a list"),
        ("--sam.rho", "expected --section.key=value"),
    ],
)
def test_bad_overrides_are_clear(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        C.apply_overrides(C.Config(), [override])


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

    recipes = [p for p in glob.glob("configs/*.yaml") if "accelerate" not in p]
    assert len(recipes) >= 5
    for path in recipes:
        C.load(path)
