#!/usr/bin/env bash
# One-shot set-up of the compose stack (the airflow-init service); safe to run again.
# Migrates both databases, writes the Airflow login, creates the PatentML Connections, the training
# pool and the model bucket. Everything comes from the environment (see docker-compose.yml / .env).
#
# Runs as the image's airflow user, after the airflow-volumes service (docker/init-volumes.sh, root)
# has given it the folders it writes, so nothing here needs or leaves anything owned by root.
set -euo pipefail

if [[ "$(id -u)" == 0 ]]; then
    echo "error: run init.sh as the airflow user, not root: what it writes would be root's, and the services" \
         "(uid 50000) could not read it. docker/init-volumes.sh is the part that runs as root." >&2
    exit 2
fi
passwords="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-${AIRFLOW_HOME:-/opt/airflow}/simple_auth_manager_passwords.json}"
: "${PATENTML_DB_URL:?set PATENTML_DB_URL (postgresql://user:password@host:5432/patentml)}"
: "${PATENTML_S3_ENDPOINT:?set PATENTML_S3_ENDPOINT (http://seaweedfs:8333)}"
: "${PATENTML_S3_ACCESS_KEY:?}" "${PATENTML_S3_SECRET_KEY:?}" "${PATENTML_S3_BUCKET:?}"
: "${AIRFLOW_ADMIN_PASSWORD:?set AIRFLOW_ADMIN_PASSWORD}"
POOL="${PATENTML_TRAIN_POOL:-gpu}"
POOL_SLOTS="${PATENTML_TRAIN_POOL_SLOTS:-1}"

echo "== Airflow metadata database"
airflow db migrate

echo "== PatentML schema"
PATENTML_DATABASE_URL="$PATENTML_DB_URL" patentml db upgrade

echo "== Airflow login (SimpleAuthManager)"
mkdir -p "$(dirname "$passwords")"
python - "$passwords" <<'PY'
import json, os, sys
# Readable by its owner only, written under a temporary name and renamed: never half a file, and no
# half-written copy of the password left behind when the write fails (a full disk).
path = sys.argv[1]
tmp = path + ".tmp"
fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
try:
    with os.fdopen(fd, "w") as fh:
        json.dump({"admin": os.environ["AIRFLOW_ADMIN_PASSWORD"]}, fh)
    os.replace(tmp, path)
except BaseException:
    os.unlink(tmp)
    raise
PY

echo "== Connections patentml_db and patentml_s3"
# The file holds passwords: a private temporary file (mktemp: 0600, unguessable name), removed on exit.
connections="$(mktemp --suffix=.json)"
trap 'rm -f "$connections"' EXIT
python - <<'PY' > "$connections"
import json, os
from urllib.parse import parse_qs, urlsplit, unquote
db = urlsplit(os.environ["PATENTML_DB_URL"])
socket_dir = parse_qs(db.query).get("host", [None])[0]  # postgresql://user@/db?host=/run/postgresql
print(json.dumps({
    "patentml_db": {
        "conn_type": "postgres", "host": db.hostname or socket_dir, "port": db.port or 5432,
        "login": unquote(db.username or ""), "password": unquote(db.password or ""),
        "schema": db.path.lstrip("/"), "description": "PatentML corpus and results",
    },
    "patentml_s3": {
        "conn_type": "aws", "login": os.environ["PATENTML_S3_ACCESS_KEY"],
        "password": os.environ["PATENTML_S3_SECRET_KEY"], "description": "PatentML model store",
        "extra": json.dumps({
            "endpoint_url": os.environ["PATENTML_S3_ENDPOINT"],
            "region_name": os.environ.get("PATENTML_S3_REGION", "us-east-1"),
            "store_uri": f"s3://{os.environ['PATENTML_S3_BUCKET']}/models",
            "config_kwargs": {"s3": {"addressing_style": "path"}},
        }),
    },
}))
PY
airflow connections import --overwrite "$connections"
rm -f "$connections"

echo "== Pool ${POOL} (${POOL_SLOTS} slots)"
airflow pools set "$POOL" "$POOL_SLOTS" "PatentML training (one slot per GPU)"

echo "== Bucket ${PATENTML_S3_BUCKET}"
python - <<'PY'
import os, time
import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError
s3 = boto3.client(
    "s3", endpoint_url=os.environ["PATENTML_S3_ENDPOINT"], region_name=os.environ.get("PATENTML_S3_REGION", "us-east-1"),
    aws_access_key_id=os.environ["PATENTML_S3_ACCESS_KEY"], aws_secret_access_key=os.environ["PATENTML_S3_SECRET_KEY"],
    config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
)
bucket = os.environ["PATENTML_S3_BUCKET"]
for attempt in range(30):
    try:
        s3.create_bucket(Bucket=bucket)
        print(f"created bucket {bucket}")
        break
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            print(f"bucket {bucket} exists")
            break
        raise
    except EndpointConnectionError:
        time.sleep(2)  # the S3 gateway starts after the filer
else:
    raise SystemExit(f"S3 at {os.environ['PATENTML_S3_ENDPOINT']} did not answer")
PY
echo "== done"
