# The two set-up commands of the README. Both work on a fresh machine: they install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test build verify lint format clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Main job: install, build the default model zoo if it is missing, (later: start the service).
run: $(PY)
	$(PY) -m pip install -q -e '.[train,serve]'
	$(PY) -m training build --skip-existing

# Whole test suite, with lint, after installing what tests need.
test: $(PY)
	$(PY) -m pip install -q -e '.[train,serve,dev]'
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

# Rebuild the whole default zoo from scratch and check its quality bars.
build: $(PY)
	$(PY) -m training build --strict
	$(PY) -m training verify

verify: $(PY)
	$(PY) -m training verify

format:
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf runs .pytest_cache .ruff_cache
