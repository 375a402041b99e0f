"""Shared test helpers: subprocesses that start the CLI work from any directory and environment."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"  # helpers (workers, references) and fixtures/ live here; tests sit in folders by package
FIXTURES = TESTS / "fixtures"
TINY_CPU = str(ROOT / "configs" / "tiny-cpu.yaml")  # every test finds the recipes from any working directory


def tiny_config(out_dir, *overrides, quiet=True):
    """configs/tiny-cpu.yaml writing to ``out_dir``, no periodic evaluation (``quiet``: no printed logs),
    then ``overrides`` (``--section.key=value``)."""
    from logitsam.config import schema as C

    base = [
        f"--train.output_dir={out_dir}",
        "--train.eval_steps=null",
        *(["--train.print_logs=false"] if quiet else []),
    ]
    return C.apply_overrides(C.load(TINY_CPU), [*base, *overrides])


@pytest.fixture
def cli_env():
    """Environment for ``[sys.executable, "-m", "logitsam", ...]`` run with ``cwd=ROOT``: the package
    is importable from src/ even when it is not installed, and no network is used."""
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8"}
