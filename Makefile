# The two commands: `make demo` runs the main job, `make test` runs lint + tests.
# Both bootstrap .venv from pyproject.toml on first use (and when it changes).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true
export PYTHONUNBUFFERED := 1

.PHONY: demo test lint bench clean cluster-test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dinet demo --config configs/demo.yaml

test: $(STAMP) lint
	$(BIN)/pytest

# A Ray head + a second Ray node on loopback, a real mlflow server, a 2-worker stage spread
# over both nodes, then the same stage as a `ray job submit` job (token auth).
cluster-test: $(STAMP)
	$(BIN)/pytest tests/test_multinode.py -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	mkdir -p bench/results
	$(BIN)/python bench/models.py --out bench/results/models.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
