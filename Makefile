PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test figures clean

venv: $(STAMP)

# Re-installs only when the project's requirements change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

test: venv
	$(PY) -m pytest

figures: venv
	$(PY) suite/figures.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
