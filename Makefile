# Two entry points for a fresh machine: `make run` (the main job) and `make test`.
# The venv is created and filled from the pinned requirements on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data

.PHONY: install run airflow test system-deps clean-venv

$(VENV)/.installed: requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

# The main job on the embedded defaults (embedded Postgres + local model store under PATENTML_HOME):
# ingest DATA with the patent_ingest DAG, retrain with patent_retrain (airflow dags test), print the
# leaderboard and the champion.
run: install
	scripts/run-main-job $(DATA)

# Airflow for the UI (api-server, scheduler, dag-processor, triggerer; Ctrl-C stops them all).
airflow: install
	scripts/airflow-local

# Debian packages some tests need (idempotent; skipped when already there).
system-deps:
	@command -v apt-get >/dev/null || exit 0; \
	missing=""; \
	for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

SYSTEM_PACKAGES ?= chromium redis-server

test: install system-deps
	$(BIN)/pytest -p no:cacheprovider

clean-venv:
	rm -rf $(VENV)
