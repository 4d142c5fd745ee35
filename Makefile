# fairgate front door: `make run` and `make test` work on a fresh clone with nothing installed.
# The virtual environment is (re)built from pyproject.toml whenever that file changes.

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
CONFIG  ?= config/fairgate.yaml

.PHONY: install run test unit check bench sim clean e2e-vllm flood

install: $(STAMP)

# pip's and setuptools' output goes to $(VENV)/install.log, shown only if the install fails.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing fairgate and its dependencies into $(VENV) (log: $(VENV)/install.log)"
	@( $(PY) -m pip install --disable-pip-version-check --upgrade pip && \
	   $(PY) -m pip install --disable-pip-version-check -e '.[dev]' ) > $(VENV)/install.log 2>&1 \
	   || { cat $(VENV)/install.log; echo "install failed (log above)"; exit 1; }
	@touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/fairgate up --config $(CONFIG)

# Every test: the unit layer (tests/unit) and the integration tests (tests/integration).
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The unit layer alone: one module per test file, no redis-server, no processes, seconds.
unit: $(STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# Lint, format and types of every package (CI runs it before the tests).
PACKAGES := fairgate gateway admission estimators backends tenants loadtest

check: $(STAMP)
	$(VENV)/bin/ruff check $(PACKAGES) tests
	$(VENV)/bin/ruff format --check $(PACKAGES) tests
	$(VENV)/bin/mypy $(PACKAGES)

bench: $(STAMP)
	$(PY) -m loadtest.calibration --write BENCHMARKS.md
	$(PY) -m loadtest.estimation_bench --write BENCHMARKS.md
	$(PY) -m loadtest.admission_bench --write BENCHMARKS.md
	$(PY) -m loadtest.proxy_overhead --write BENCHMARKS.md
	$(PY) -m loadtest.quota_bench --write BENCHMARKS.md
	$(PY) -m loadtest.stream_bench --short --write BENCHMARKS.md
	$(PY) -m loadtest.kit --all --short --no-progress --out docs/loadtest --write BENCHMARKS.md

# fairgate in front of two real vLLM servers (CPU build, tiny model; ../shared/tools/real-vllm).
e2e-vllm: $(STAMP)
	PY=$(PY) bash scripts/e2e_vllm.sh

# With `make run` going: flood it from the three demo keys, print the shares against the weights.
flood: $(STAMP)
	$(VENV)/bin/fairgate loadtest config/demo/flood.yaml --target http://127.0.0.1:8080 \
		--no-progress --out demo-flood

sim: $(STAMP)
	$(VENV)/bin/fairgate sim --profile h100-llama3-8b --port 8001

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
