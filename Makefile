# The two commands a new user runs: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast lint docs bench clean airflow-start airflow-stop airflow-status

# torch first: the pinned CPU wheel; any other torch spec pulls a multi-GB CUDA build.
$(STAMP): requirements.txt requirements-lint.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$$(grep -E '^torch==' requirements.txt)"
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet -r requirements-lint.txt
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

# The house style's linters: ruff on the Python (rules in pyproject.toml), sqlfluff on the dbt
# project (dbt_project/.sqlfluff). Both run; either failing fails the target.
lint: install
	@status=0; \
	$(BIN)/ruff check plugins dags tests bench scripts || status=1; \
	$(BIN)/sqlfluff lint dbt_project || status=1; \
	exit $$status

# The dbt docs site (lineage, descriptions, tests, column types) as one self-contained HTML file
# in $(DOCS_DIR) (git-ignored), offline. dbt reads column types from built relations, so it
# builds the seeds and models into a throwaway warehouse in a temp dir (the raw schema as the
# ingest task creates it, one empty hour), never the pipeline's warehouse; no `make run` needed.
DOCS_DIR ?= .local/dbt-docs
DOCS_DBT_ARGS := --project-dir dbt_project --profiles-dir dbt_project \
	--vars '{"interval_start": "2024-01-01 00:00:00", "interval_end": "2024-01-01 01:00:00"}'
docs: install
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	export INTEREST_WAREHOUSE_PATH="$$tmp/warehouse.duckdb" DBT_LOG_PATH="$$tmp/logs" \
		DBT_SEND_ANONYMOUS_USAGE_STATS=false && \
	$(BIN)/python -c 'import sys, duckdb; from interest_pipeline.warehouse import SCHEMA_DDL; \
		duckdb.connect(sys.argv[1]).execute(SCHEMA_DDL).close()' "$$INTEREST_WAREHOUSE_PATH" && \
	$(BIN)/dbt --quiet build $(DOCS_DBT_ARGS) --target-path "$$tmp/target" \
		--select "resource_type:seed resource_type:model" && \
	$(BIN)/dbt --quiet docs generate --static $(DOCS_DBT_ARGS) --target-path "$$tmp/target" && \
	mkdir -p $(DOCS_DIR) && cp "$$tmp/target/static_index.html" $(DOCS_DIR)/index.html && \
	echo "dbt docs: $(DOCS_DIR)/index.html (open it in a browser; no server needed)"

# The README's CLI and HTTP API examples, re-run and written back into README.md, on the warehouse
# `make run` builds (built in-process in a temp dir, a minute or two). ARGS="--check" only
# compares; ARGS="--warehouse .local/warehouse.duckdb" reads yours instead.
.PHONY: readme-examples
readme-examples: install
	$(BIN)/python scripts/readme_examples.py $(ARGS)

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
