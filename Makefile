# The two commands a new machine needs (README): `make demo` runs the main job, `make test` the tests.
# Both create and use .venv; everything is installed from PyPI with the versions in constraints.txt.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-fast render bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[all]'
	touch $(STAMP)

# detect -> plan -> render -> build (export + validate) -> embedded tritonserver -> latency report -> stop
demo: venv
	$(PY) -m tritonkit.cli demo

test: venv
	$(PY) -m pytest

# Everything that starts no server and exports no model (seconds).
test-fast: venv
	$(PY) -m pytest -m "not integration"

clean:
	rm -rf $(VENV) reports .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
