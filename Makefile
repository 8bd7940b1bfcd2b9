PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS ?= test,peers

.PHONY: venv test figures refresh regress bench peers docs clean

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
	$(PY) -m suite figures $(ARGS)

# Rewrite the committed results/ and reports/ (every other command writes under out/): the
# figures recomputed, the other reports rewritten from their committed rows. On purpose only.
refresh: venv
	$(PY) -m suite figures --out . $(ARGS)
	$(PY) -m suite peers --report-only --out results/peers.csv --report reports/peers.md
	$(PY) -m suite lam --out results/learned_lam.csv --reports reports
	$(PY) -m suite omniglot table2 --report-only --seeds 0 1 2 --out results/omniglot --reports reports
	$(PY) -m suite omniglot variants --report-only --out results/omniglot --reports reports
	$(PY) -m suite omniglot choose --report-only --out results/omniglot --reports reports

# Compare accuracy, memory and time-ratio metrics with results/baselines/ (UPDATE=1 replaces them).
regress: venv
	$(PY) -m suite regress $(if $(UPDATE),--update,)

bench: venv
	$(PY) -m pytest --benchmark-only $(ARGS)

peers: venv
	$(PY) -m suite peers $(ARGS)

# The documentation site from docs/ (mkdocs.yml) into out/site; strict: a broken link fails.
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[$(EXTRAS),docs]'
	touch $(DOCS_STAMP)

# Then every shell command of the README and docs/, run at its smallest scale.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict
	$(PY) -m pytest -m docs_commands tests/test_docs_commands.py

clean:
	rm -rf $(VENV) .pytest_cache out/site
