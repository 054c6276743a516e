#!/usr/bin/env bash
# Runs once, when the postgres volume is empty: one role and one database each for Airflow and PatentML,
# and a read-only login for analysts (patentml_analyst): it may read every PatentML table, present and
# future (the tables are created later by `patentml db upgrade` as role patentml), and write nothing.
# On a stack created before this role existed, run this file's SQL once by hand (docs/airflow.md).
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
     -v airflow_pw="$AIRFLOW_DB_PASSWORD" -v patentml_pw="$PATENTML_DB_PASSWORD" \
     -v analyst_pw="$PATENTML_ANALYST_PASSWORD" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_pw';
CREATE DATABASE airflow OWNER airflow;
CREATE ROLE patentml LOGIN PASSWORD :'patentml_pw';
CREATE DATABASE patentml OWNER patentml;
-- Read-only by grants (SELECT only) and, as a second fence, by session default.
CREATE ROLE patentml_analyst LOGIN PASSWORD :'analyst_pw';
ALTER ROLE patentml_analyst SET default_transaction_read_only = on;
REVOKE ALL ON DATABASE airflow FROM PUBLIC;
GRANT CONNECT ON DATABASE patentml TO patentml_analyst;
\connect patentml
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO patentml_analyst;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO patentml_analyst;
ALTER DEFAULT PRIVILEGES FOR ROLE patentml IN SCHEMA public GRANT SELECT ON TABLES TO patentml_analyst;
SQL
