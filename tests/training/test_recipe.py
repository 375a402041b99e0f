"""``train`` and ``sft`` are one staged recipe (training/recipe.py) over one run lifecycle (lifecycle.py):
the same stages in the same order, TrainingArguments built once, nothing written before every check."""

from __future__ import annotations

import json

import pytest
import transformers

from logitsam.errors import ConfigError
from logitsam.training import recipe
from logitsam.training.run import PreferenceRecipe, train
from logitsam.training.rundir import LOCK_NAME
from logitsam.training.sft import SftRecipe, sft
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow  # trains: `pytest -m 'not slow'` skips it
STAGES = ("check", "setup_data", "setup_model", "setup_reference", "setup_trainer")


def spied(base: type[recipe.Recipe], calls: list[str]) -> type[recipe.Recipe]:
    """``base`` whose stages append their names to ``calls``."""

    def stage(name):
        def call(self, *a, **k):
            calls.append(name)
            return getattr(base, name)(self, *a, **k)

        return call

    return type(f"Spied{base.__name__}", (base,), {name: stage(name) for name in STAGES})


@pytest.fixture
def built(monkeypatch):
    """How many TrainingArguments were built (the optimizer's trial and the culprit search included)."""
    count = [0]
    real = transformers.TrainingArguments.__init__

    def init(self, *a, **k):
        count[0] += 1
        real(self, *a, **k)

    monkeypatch.setattr(transformers.TrainingArguments, "__init__", init)
    return count


@pytest.mark.parametrize(("entry", "kind"), [(train, PreferenceRecipe), (sft, SftRecipe)])
def test_train_and_sft_run_the_same_stages_through_one_recipe(tmp_path, monkeypatch, built, entry, kind):
    calls: list[str] = []
    used: list[type] = []
    real_run = recipe.run_recipe

    def run_recipe(r, cfg, *a, **k):
        used.append(type(r))
        return real_run(spied(type(r), calls)(), cfg, *a, **k)

    monkeypatch.setattr(f"{entry.__module__}.run_recipe", run_recipe)
    out = tmp_path / "run"
    metrics = entry(tiny_config(out, "--train.max_steps=2", "--data.eval_fraction=0.25"))["metrics"]
    assert used == [kind] and calls == list(STAGES)
    assert built[0] == 1  # TrainingArguments built once, by the preflight, for the whole run
    assert metrics["rows_eval"] > 0 and "eval_loss" in metrics
    state = json.loads((out / "run_state.json").read_text())
    assert state["final"]["step"] == 2  # the lifecycle's final marker
    assert json.loads((out / "data_fingerprint.json").read_text())["kind"] == kind.kind
    assert not (out / LOCK_NAME).exists()  # released


@pytest.mark.parametrize("kind", [PreferenceRecipe, SftRecipe])
def test_a_stage_that_fails_leaves_the_overwritten_run_whole(tmp_path, kind):
    """overwrite_output_dir removes the old run only once every stage before training has passed."""
    out = tmp_path / "run"
    train(tiny_config(out, "--train.max_steps=1"))
    before = sorted(p.name for p in out.iterdir())

    class Failing(kind):
        def setup_trainer(self, *a, **k):
            raise ConfigError("train.optim: refused on purpose")

    with pytest.raises(ConfigError, match="refused on purpose"):
        recipe.run_recipe(Failing(), tiny_config(out, "--train.max_steps=1", "--train.overwrite_output_dir=true"))
    assert sorted(p.name for p in out.iterdir()) == before  # nothing removed, no lock left behind
    assert (out / "metrics.jsonl").read_text()
