#!/usr/bin/env bash
# Runs once, when the postgres volume is empty: one role and one database each for Airflow and PatentML.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
     -v airflow_pw="$AIRFLOW_DB_PASSWORD" -v patentml_pw="$PATENTML_DB_PASSWORD" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_pw';
CREATE DATABASE airflow OWNER airflow;
CREATE ROLE patentml LOGIN PASSWORD :'patentml_pw';
CREATE DATABASE patentml OWNER patentml;
SQL
