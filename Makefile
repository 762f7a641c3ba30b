# `make demo` and `make test` do all set-up on a fresh machine: they create .venv if missing and install.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# torch and torchvision are pinned to the builds this project is tested with (a CUDA build that also
# runs on CPU); pip takes them from the local wheel cache where one exists.
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install test test-all demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## the test suite (CPU; gpu tests skip themselves without a GPU, postgres tests without a server)
test: install
	$(BIN)/ruff check lowspace tests experiments
	$(BIN)/python -m pytest -q

## the main job: a small, real latency-aware search end to end on Fashion-MNIST (one CPU thread unless
## OMP_NUM_THREADS says otherwise: small networks train faster so on a busy machine, and time steadier)
demo: install
	bash experiments/demo/prepare.sh
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/lowspace search --config experiments/demo/demo.yaml

clean:
	rm -rf $(VENV) demo_out .pytest_cache
