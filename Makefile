# The two set-up commands of the README. Both work on a fresh machine: they install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 0.0.0.0
PORT ?= 8000
MODELS ?= models
# Debian's prometheus package brings promtool, which the metrics test runs; its chromium, the browser of
# the playground's tests (tests/ui, through Playwright: no browser is downloaded).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test train-setup build variants verify format clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Main job: install the server, build the default model zoo only if the repository is empty (the zoo is
# committed, so a fresh clone skips training), then serve it.
run: $(PY)
	$(PY) -m pip install -q -e '.[serve]'
	@ls $(MODELS)/*/config.json >/dev/null 2>&1 || { \
		$(PY) -m pip install -q -e '.[train,serve]' && $(PY) -m training build --skip-existing --out $(MODELS); }
	SERVE_MODEL_REPOSITORY=$(MODELS) SERVE_HOST=$(HOST) SERVE_PORT=$(PORT) $(PY) -m app

# Whole test suite, with lint and the import contracts, after installing what tests need. Then, as
# their own step, the image tests on a real Docker engine (tests/deploy, marker docker): they start
# dockerd when none answers (as root; else through sudo, asked for once here) and stop it by its PID,
# make the base images' stand-ins when the official images cannot be had, build and run the images.
# Debian's docker.io, docker-compose (1.29) and debootstrap are installed when missing.
test: $(PY)
	@command -v promtool >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q prometheus; }
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }
	@PATH="$$PATH:/usr/sbin:/sbin"; missing=; \
	for p in dockerd:docker.io docker-compose:docker-compose debootstrap:debootstrap; do \
		command -v $${p%%:*} >/dev/null || missing="$$missing $${p#*:}"; done; \
	[ -z "$$missing" ] || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q $$missing; }
	$(PY) -m pip install -q -e '.[train,serve,dev]'
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -m 'not docker'
	@docker info >/dev/null 2>&1 || [ -z "$(SUDO)" ] || $(SUDO) -v
	$(PY) -m pytest -q -m docker tests/deploy

# The training side (torch, onnx, scikit-learn, matplotlib) beside the server. Where pip would take
# torch's CUDA wheels and no GPU is wanted: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
train-setup: $(PY)
	$(PY) -m pip install -q -e '.[train,serve]'

# Rebuild the whole default zoo from scratch, remake its variants from it, and check its quality bars.
build: train-setup
	$(PY) -m training build --strict --version 1 --overwrite
	$(MAKE) variants
	$(PY) -m training verify

# The zoo's faster variants of version 1 (training/variants.py): version 2 optimized, version 3 int8
# where int8 pays (LeNet-5 ran at 0.5x in int8, the GRU and the vanilla RNN have no int8 kernel).
# The speed figures in their reports are measured pinned to one core.
ZOO_OPTIMIZED := mlp-digits lenet5-digits alexnet-shapes resnet-shapes lstm-order gru-order rnn-order bert-scramble
ZOO_INT8 := mlp-digits alexnet-shapes resnet-shapes lstm-order bert-scramble
variants: train-setup
	for m in $(ZOO_OPTIMIZED); do taskset -c 1 $(PY) -m training variant $$m --kind optimized --from 1 --version 2 --overwrite || exit 1; done
	for m in $(ZOO_INT8); do taskset -c 1 $(PY) -m training variant $$m --kind int8 --from 1 --version 3 --overwrite || exit 1; done

verify: train-setup
	$(PY) -m training verify

format:
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf runs .pytest_cache .ruff_cache
