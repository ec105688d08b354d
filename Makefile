# The two commands a new user runs: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast bench clean airflow-start airflow-stop airflow-status

# torch first: the pinned CPU wheel; any other torch spec pulls a multi-GB CUDA build.
$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$$(grep -E '^torch==' requirements.txt)"
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# The sample window through the daily backfill DAG (one run per day; hourly versions inside).
run: install
	$(BIN)/interest-main-job --daily $(ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# Benchmarks (not tests): prints a table, writes bench/results/*.json, bench/latest.{json,md}.
bench: install
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Local Airflow for real: scheduler, dag-processor, api-server (UI on :8080), triggerer.
airflow-start: install
	$(BIN)/interest-airflow start

airflow-stop:
	$(BIN)/interest-airflow stop

airflow-status:
	$(BIN)/interest-airflow status

clean:
	rm -rf .local
