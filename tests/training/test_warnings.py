"""No deprecation noise on a normal run: each warning a user saw on every run is avoided at its source."""

import os
import subprocess
import sys
import warnings

import pytest

from conftest import ROOT, TINY_CPU

SEEN_BEFORE = (
    "is_gradient_checkpointing",  # peft reading transformers 5's deprecated property (LoRA runs)
    "`gradient_checkpointing` is deprecated",  # TrainingArguments' renamed field
    "torch.jit.script",  # torch's forward-AD decompositions
    "project.license",  # setuptools: the license as a TOML table
)


@pytest.mark.slow
def test_a_tiny_lora_run_prints_no_warnings(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.path.abspath("src")}
    env.pop("PYTHONWARNINGS", None)
    argv = [
        *("train", "--config", TINY_CPU, f"--train.output_dir={tmp_path / 'out'}"),
        *("--train.max_steps=2", "--train.eval_steps=null", "--train.save_model=false", "--train.print_logs=false"),
        *("--model.lora_r=4", "--train.gradient_checkpointing=true", "--loss.reference=precomputed"),
    ]
    env["LOGITSAM_CACHE"] = str(tmp_path / "cache")
    out = subprocess.run(
        [sys.executable, "-W", "default", "-m", "logitsam", *argv], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    assert "Warning" not in text, [line for line in text.splitlines() if "Warning" in line]
    assert not [s for s in SEEN_BEFORE if s in text]


def test_pyproject_license_is_an_spdx_string(monkeypatch):
    monkeypatch.chdir(ROOT)  # setuptools reads the project relative to it
    from setuptools.config.pyprojecttoml import apply_configuration, read_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        project = read_configuration("pyproject.toml")
        dist = apply_configuration(Distribution(), "pyproject.toml")
    assert project["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in project["build-system"]["requires"][0]  # the first to read SPDX expressions
    assert not [str(w.message)[:80] for w in caught if "license" in str(w.message)]
    assert dist.metadata.license_expression == "Apache-2.0"
