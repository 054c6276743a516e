# Two entry points for a fresh machine: `make run` (the main job) and `make test`.
# The venv is created and filled from the pinned requirements on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Empty: ../shared/data when it is there, else scripts/run-main-job says what it can ingest.
DATA ?=

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
# The data check comes first: a fresh clone without data learns what to pass before a 3-minute install.
run:
	@scripts/run-main-job --check-data $(DATA)
	@$(MAKE) --no-print-directory install
	scripts/run-main-job $(DATA)

# Airflow for the UI (api-server, scheduler, dag-processor, triggerer; Ctrl-C stops them all).
airflow: install
	scripts/airflow-local

# Debian packages some tests need (tests/system.py names them and lists the missing ones): installed only
# when this user may (root, or sudo without a password). Otherwise nothing is installed, the tests that
# need them skip naming the package and the command, and everything else runs.
system-deps: install
	@missing="$$($(BIN)/python -m tests.system)"; \
	[ -n "$$missing" ] || exit 0; \
	if ! command -v apt-get >/dev/null; then \
	  echo "system-deps: missing $$missing and no apt-get; the tests that need them skip"; exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then as=""; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then as="sudo -n"; \
	else echo "system-deps: not installing $$missing (that needs root); the tests that need it skip." \
	          "To run them: sudo apt-get install -y $$missing"; exit 0; fi; \
	echo "system-deps: installing $$missing"; \
	$$as apt-get update -qq && $$as env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null \
	  || echo "system-deps: apt-get install $$missing failed; the tests that need it skip"

test: install system-deps
	$(BIN)/pytest -p no:cacheprovider

clean-venv:
	rm -rf $(VENV)
