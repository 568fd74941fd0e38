# `make run` and `make test` set everything up on a fresh machine, then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# On a machine without the local CPU wheel, point pip at PyTorch's CPU index, e.g.
#   make run TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

.PHONY: run test format bench bench-all clean-runs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e '.[train,dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/racmkd run --config configs/default.yaml

# Debian packages the tests and benchmarks start themselves on loopback: the Mosquitto MQTT broker
# (telemetry tests) and stress-ng (the runtime benchmark's real load). Installed when missing and
# when we may (root with apt-get, as in CI); otherwise install them yourself.
define need
	@missing=""; for tool in $(1); do command -v $$tool >/dev/null 2>&1 || [ -x /usr/sbin/$$tool ] || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing$$missing"; apt-get install -y -q $$missing >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $$missing >/dev/null 2>&1) || echo "could not install$$missing"; \
		else echo "missing:$$missing (apt-get install$$missing); the tests that need them will say so"; fi; \
	fi
endef

test: $(STAMP)
	$(call need,mosquitto)
	$(BIN)/ruff check racmkd tests benchmarks examples
	$(BIN)/ruff format --check racmkd tests benchmarks examples
	RACMKD_PROGRESS=0 $(BIN)/python -m pytest -q

# Lay the code out as `make test` checks it (ruff format, [tool.ruff] in pyproject.toml).
format: $(STAMP)
	$(BIN)/ruff format racmkd tests benchmarks examples

# The benchmark suite (BENCHMARKS.md): the seed paper's tables, baselines, robustness, cost curves.
bench: $(STAMP)
	$(BIN)/python benchmarks/suite.py

# The suite, then each issue's own benchmark (hours: each trains or compresses its own runs).
# The runtime and deployment benchmarks measure the compression benchmark's run (made with
# configs/default.yaml, every tier compressed, as `make run`), named here: by default they take
# runs/latest, which the foundation benchmark's runs move (its last is an uncompressed clean run).
BENCH_RUN ?= runs/bench-compression
bench-all: bench
	$(call need,mosquitto stress-ng)
	$(BIN)/python benchmarks/foundation.py
	$(BIN)/python benchmarks/compression.py
	$(BIN)/python benchmarks/runtime.py --run $(BENCH_RUN)
	$(BIN)/python benchmarks/deploy.py --run $(BENCH_RUN)
	$(BIN)/python benchmarks/audio_windows.py --run $(BENCH_RUN)
	$(BIN)/python benchmarks/sensor_inputs.py --sensor pen
	$(BIN)/python benchmarks/sensor_inputs.py --sensor imu

clean-runs:
	rm -rf runs
