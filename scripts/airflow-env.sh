# Shared by scripts/airflow-local and scripts/run-main-job (sourced, not run): Airflow on this
# checkout's dags/ and plugins/, with its metadata in the PatentML Postgres (own database `airflow`).
# Anything already set in the environment wins.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
if [[ ! -x "$VENV/bin/airflow" ]]; then
    echo "error: no Airflow in $VENV: run 'make install' first (or set VENV=...)" >&2
    exit 1
fi
export PATH="$VENV/bin:$PATH"
export PATENTML_HOME="${PATENTML_HOME:-$HOME/.patentml}"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$PATENTML_HOME/airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$REPO/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$REPO/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES="${AIRFLOW__CORE__LOAD_EXAMPLES:-False}"
export AIRFLOW__CORE__EXECUTOR="${AIRFLOW__CORE__EXECUTOR:-LocalExecutor}"
# LocalExecutor starts one worker process per slot: keep it small on a laptop (the default is 32).
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-${AIRFLOW_PARALLELISM:-4}}"
export PYTHONUNBUFFERED=1
mkdir -p "$AIRFLOW_HOME" "$PATENTML_HOME/incoming"  # incoming: where the ingest DAG may read by default

# Print the metadata URL: database `airflow` on the server PatentML uses (started if embedded).
airflow_metadata_url() {
    python - <<'PY'
import sys
from urllib.parse import urlsplit

import psycopg2
from psycopg2 import sql

from patentml.db.engine import database_url, libpq_url
from patentml.settings import Settings

url = libpq_url(database_url(Settings.from_env()))  # starts the embedded server when needed
parts = urlsplit(url)
admin = psycopg2.connect(parts._replace(path="/postgres").geturl())
admin.autocommit = True
try:
    with admin.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = 'airflow'")
        if cur.fetchone() is None:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier("airflow")))
except psycopg2.Error as exc:
    sys.exit(f"cannot create the Airflow database on {parts.hostname or 'the embedded server'}: {exc}\n"
             "create it yourself or set AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
finally:
    admin.close()
print("postgresql+psycopg2://" + parts._replace(path="/airflow").geturl().split("://", 1)[1])
PY
}

prepare_airflow() {
    if [[ -z "${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-}" ]]; then
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="$(airflow_metadata_url)"
        export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN
    fi
    echo "PatentML home:   $PATENTML_HOME"
    echo "Airflow home:    $AIRFLOW_HOME (metadata: database 'airflow' on the PatentML Postgres)"
    patentml db upgrade > /dev/null
    airflow db migrate > "$AIRFLOW_HOME/db-migrate.log" 2>&1 || { cat "$AIRFLOW_HOME/db-migrate.log" >&2; return 1; }
    # The scheduler leaves tasks of a missing pool queued forever: make sure the training pool exists.
    airflow pools set "${PATENTML_TRAIN_POOL:-gpu}" "${PATENTML_TRAIN_POOL_SLOTS:-1}" "PatentML training" > /dev/null
}
