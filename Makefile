PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS ?= test,peers

.PHONY: venv test figures regress bench peers clean

venv: $(STAMP)

# Re-installs only when the project's requirements change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[$(EXTRAS)]'
	touch $(STAMP)

test: venv
	$(PY) -m pytest

figures: venv
	$(PY) suite/figures.py $(ARGS)

# Compare accuracy, memory and time-ratio metrics with results/baselines/ (UPDATE=1 replaces them).
regress: venv
	$(PY) -m suite.regress $(if $(UPDATE),--update,)

bench: venv
	$(PY) -m pytest --benchmark-only $(ARGS)

peers: venv
	$(PY) -m suite.peers $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
