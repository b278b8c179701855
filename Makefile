# The two commands: `make demo` runs the main job, `make test` runs lint + tests.
# `make test-fast` is the quick lane while editing: lint + the unit tests that take no Ray, no
# servers and no more than a second or two each (pytest -m "unit and not slow").
# Both bootstrap .venv from pyproject.toml on first use (and when it changes).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-fast lint bench clean cluster-test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dinet demo --config configs/demo.yaml

# Everything: first all but the cluster tests (one local Ray for the session), then the cluster
# tests in a pytest process of their own, with no local Ray holding ports or CPUs.
test: $(STAMP) lint
	$(BIN)/pytest -m "not cluster" --durations=15
	$(BIN)/pytest -m cluster --durations=5

test-fast: $(STAMP) lint
	$(BIN)/pytest -m "unit and not slow" -q

# The cluster tests alone: a Ray head + a second Ray node on loopback, a real mlflow server, a
# 2-worker stage spread over both nodes, then the same stage as a Ray Job through
# `dinet train --address` (token auth); the registry against the mlflow server; training
# through an mlflow server that stops mid-stage.
cluster-test: $(STAMP)
	$(BIN)/pytest -m cluster -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	mkdir -p bench/results
	$(BIN)/python bench/models.py --out bench/results/models.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
