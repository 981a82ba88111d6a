# The command vocabulary of promoguard. README and .ci/run use only these targets.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The network here is closed and nobody asked to be tracked.
export BENTOML_DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export PYTHONHASHSEED := 0

# 100k attempts: the replay headline in `train` dominates the demo's time and grows with the world.
# The README's model figures are from DEMO_EVENTS=200000.
DEMO_EVENTS ?= 100000
DEMO_PORT ?= 3000
PYTEST_ARGS ?=

.PHONY: setup browser promtool wrk bento demo test bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	@# uv installs the same pins in under a minute where pip takes three; pip remains the fallback.
	@# Bytecode is compiled at install, as pip does: with PYTHONDONTWRITEBYTECODE set, every command
	@# would otherwise compile Feast, MLflow and BentoML from source at each start.
	$(BIN)/pip install --quiet -c constraints.txt uv
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -c constraints.txt -e '.[dev]' \
		|| $(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Headless Chromium for the drift report's browser test (Debian's package; needs root, as here).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# promtool, for the alert rules' tests (Debian's prometheus package; needs root, as here).
promtool:
	@command -v promtool >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

# wrk, the HTTP load generator of benchmarks/load.py (Debian's package; needs root, as here).
wrk:
	@command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null; }

# A bento of the service (deploy/requirements.txt is regenerated from the pins first).
bento: setup
	$(BIN)/python deploy/requirements.py
	$(BIN)/bentoml build

demo: setup
	$(BIN)/promoguard simulate --events $(DEMO_EVENTS)
	$(BIN)/promoguard features build
	$(BIN)/promoguard features apply
	$(BIN)/promoguard features materialize
	$(BIN)/promoguard train
	$(BIN)/promoguard promote
	$(BIN)/promoguard serve --port $(DEMO_PORT) --demo

test: setup browser promtool
	$(BIN)/python -m pytest -n 2 --dist loadgroup --cov --cov-report=term $(PYTEST_ARGS)

# benchmarks/*_service.py are services a benchmark starts, not benchmarks.
bench: setup wrk
	@for script in benchmarks/*.py; do case $$script in *_service.py) continue;; esac; \
		echo "== $$script"; $(BIN)/python $$script || exit 1; done

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) data/raw data/features data/feast data/reports mlflow/mlflow.db mlflow/artifacts
