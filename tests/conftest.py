"""Shared test helpers: subprocesses that start the CLI work from any directory and environment."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cli_env():
    """Environment for ``[sys.executable, "-m", "logitsam", ...]`` run with ``cwd=ROOT``: the package
    is importable from src/ even when it is not installed, and no network is used."""
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8"}

