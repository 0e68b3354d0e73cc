# SPDX-License-Identifier: Apache-2.0
# Entry points: `make test` (set-up + lint + tests), `make demo` (the main job on the embedded data, results/demo).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1

.PHONY: install test lint demo

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23.2"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

install: $(VENV)/.installed

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest

# Train, test, export and check MambaADv2 on the embedded texture data; writes results/demo/report.md.
# Refuses to replace a finished run: DEMO_ARGS=--overwrite (or --out elsewhere).
demo: install
	$(PY) -m anomalib_mambaadv2.demo $(DEMO_ARGS)
