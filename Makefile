# meli-retrain: `make demo` runs the nightly retraining end to end on the embedded default;
# `make test` runs the test suite. Both create/reuse .venv from the pinned requirements.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
REPO := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
VENV ?= $(REPO)/.venv
PY := $(VENV)/bin/python
PYTHON ?= python3
MELI_HOME ?= $(REPO)/.meli
export MELI_HOME
export MELI_REPO := $(REPO)
export AIRFLOW_HOME := $(MELI_HOME)/airflow
export AIRFLOW_CONFIG := $(REPO)/airflow.cfg
export GX_ANALYTICS_ENABLED := false
export PYTHONWARNINGS := ignore::DeprecationWarning,ignore::FutureWarning,ignore::UserWarning
DEMO_ROWS ?= 4000
DEMO_CONF ?= {"epochs": 6, "embedding_epochs": 5, "models": ["mlp", "cnn", "bilstm"]}

.PHONY: venv browser demo test lint layout airflow-ui mlflow-ui distributed-test bench clean

venv: $(VENV)/.installed

# the pinned requirements, then the project itself, editable and offline (setuptools comes with the venv):
# `pipelines` imports from any directory and the `meli` command is on $(VENV)/bin
$(VENV)/.installed: requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

# `airflow dags test` runs no scheduler: the nightly run's DeadlineAlert is off there (MELI_RETRAIN_DEADLINE_H=0;
# Airflow 3.3's dag.test() also fails on a finished run of a DAG with a deadline)
# each finished task of the DAG runs is printed as it ends (full logs in $(MELI_HOME)/demo-*.log)
TASK_PROGRESS := { grep --line-buffered -oE '\[DAG TEST\] end task task_id=[a-z_]+( map_index=[0-9]+)?' \
  | sed -u -E 's/.*task_id=([a-z_]+)( map_index=([0-9]+))?/      done: \1 \3/' || true; }

demo: venv
	@mkdir -p $(MELI_HOME)/landing
	@echo "[1/4] writing $(DEMO_ROWS) SYNTHETIC listings to $(MELI_HOME)/landing/"
	@$(VENV)/bin/meli demo-data $(MELI_HOME)/landing/demo-listings.jsonl.gz --rows $(DEMO_ROWS) --seed 7 --dirty 4
	@echo "[2/4] preparing the Airflow database (SQLite under $(AIRFLOW_HOME))"
	@$(VENV)/bin/airflow db migrate > $(MELI_HOME)/airflow-db-migrate.log 2>&1 || (cat $(MELI_HOME)/airflow-db-migrate.log; exit 1)
	@echo "[3/4] meli_retrain: ingest, validate (GX), FastText, 3 classifiers + ensemble, register, gate (~1 min on 2 cores)"
	@MELI_RETRAIN_DEADLINE_H=0 $(VENV)/bin/airflow dags test meli_retrain --conf '$(DEMO_CONF)' 2>&1 | tee $(MELI_HOME)/demo-retrain.log | $(TASK_PROGRESS) \
	  || (tail -n 80 $(MELI_HOME)/demo-retrain.log; echo "meli_retrain failed; full log: $(MELI_HOME)/demo-retrain.log"; exit 1)
	@echo "[4/4] meli_score: batch-score the new partition with the champion"
	@$(VENV)/bin/airflow dags test meli_score 2>&1 | tee $(MELI_HOME)/demo-score.log | $(TASK_PROGRESS) \
	  || (tail -n 80 $(MELI_HOME)/demo-score.log; echo "meli_score failed; full log: $(MELI_HOME)/demo-score.log"; exit 1)
	@$(VENV)/bin/meli summary

# Debian's chromium for the Data Docs browser test (never a browser download); the test skips
# with a message where it cannot be installed.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { echo "installing Debian's chromium for the Data Docs browser test"; \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1)) \
	    || echo "chromium could not be installed: the Data Docs browser test will be skipped"; }; } || true

test: venv browser
	$(PY) -m pytest -q tests --ignore=tests/distributed/test_distributed.py
	@if $(PY) tests/distributed/meli_cluster.py --check; then \
	  $(MAKE) --no-print-directory distributed-test; \
	else \
	  echo "make test: SKIPPED the distributed test (CeleryExecutor + Postgres + Redis + MLflow server); run 'make distributed-test' where they answer on 127.0.0.1"; \
	fi

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# the packages' import order, cycles, private reach-ins and facades (tests/check_layout.py's docstring)
layout: venv
	$(PY) tests/check_layout.py

# The UIs on 127.0.0.1; ports: make airflow-ui AIRFLOW_PORT=8081, make mlflow-ui MLFLOW_PORT=5001.
# `airflow standalone` starts its components as `airflow ...` subprocesses: the venv's bin goes first
# on PATH, so no activated virtualenv is needed; the tasks' execution API follows the chosen port.
AIRFLOW_PORT ?= 8080
MLFLOW_PORT ?= 5000
airflow-ui: venv
	@mkdir -p $(AIRFLOW_HOME)
	$(VENV)/bin/airflow db migrate > $(MELI_HOME)/airflow-db-migrate.log 2>&1 || (cat $(MELI_HOME)/airflow-db-migrate.log; exit 1)
	@echo "Airflow UI: http://127.0.0.1:$(AIRFLOW_PORT) (user admin, password in $(AIRFLOW_HOME)/simple_auth_manager_passwords.json.generated); DAGs start paused"
	PATH="$(VENV)/bin:$$PATH" AIRFLOW__API__PORT=$(AIRFLOW_PORT) AIRFLOW__API__BASE_URL=http://127.0.0.1:$(AIRFLOW_PORT) \
	  AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://127.0.0.1:$(AIRFLOW_PORT)/execution/ \
	  $(VENV)/bin/airflow standalone

mlflow-ui: venv
	@mkdir -p $(MELI_HOME)/mlflow
	@echo "MLflow UI: http://127.0.0.1:$(MLFLOW_PORT)"
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(MELI_HOME)/mlflow/mlflow.db --host 127.0.0.1 --port $(MLFLOW_PORT)

# Real distributed run on 127.0.0.1 (~4-5 min), MLflow server with basic-auth (docker/mlflow_auth.py):
# needs Postgres :5432 (user postgres) and Redis :6379; skips otherwise
distributed-test: venv
	$(PY) -m pytest -q tests/distributed

BENCH ?=
bench: venv
	$(PY) -m benchmarks.run $(BENCH)

clean:
	rm -rf $(MELI_HOME)
