#!/usr/bin/env bash
# The airflow-volumes service: the one step of the stack that runs as root, once per `compose up`,
# before airflow-init. Docker creates a new named volume root-owned when the image has no folder at its
# mount point (and a bind mount or an older volume keeps whatever owner it had), so the airflow user
# (AIRFLOW_UID, default 50000) could not write the login into the secrets volume. Like the official
# Airflow compose's init, this creates the folders the stack writes and gives them to that user; it
# runs nothing but coreutils. The folders come from the same settings the services read.
set -euo pipefail

uid="${AIRFLOW_UID:-50000}"
[[ "$uid" =~ ^[1-9][0-9]*$ ]] || { echo "error: AIRFLOW_UID=$uid must be the airflow user's uid (not 0)" >&2; exit 2; }
home="${AIRFLOW_HOME:-/opt/airflow}"
secrets="$(dirname "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-$home/simple_auth_manager_passwords.json}")"
echo "== Folders owned by uid $uid"
for dir in "${AIRFLOW__LOGGING__BASE_LOG_FOLDER:-$home/logs}" "$secrets" "${PATENTML_HOME:-$home/patentml}"; do
    mkdir -p "$dir"
    chown -R "$uid:0" "$dir"  # -R does not follow symlinks
    echo "   $dir"
done
chown "$uid:0" "$home"
[[ "$secrets" == "$home" ]] || chmod 0700 "$secrets"  # the login: for the Airflow services' eyes only
