"""docker-compose.yml and the Dockerfiles, checked statically (Docker cannot run here); the init script
run for real against the test Postgres and SeaweedFS."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.airflow_env import REPO, airflow_env, drop_metadata_database, metadata_database, run_airflow

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILES = {"docker/Dockerfile": "patentml-airflow:latest", "docker/Dockerfile.cuda": "patentml-trainer:latest"}
AIRFLOW_SERVICES = {
    "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
    "airflow-worker-cpu", "airflow-worker-gpu",
}
LONG_RUNNING = {"postgres", "redis", "seaweedfs"} | (AIRFLOW_SERVICES - {"airflow-init"})
#: What third-party images are known to contain (their entry commands and healthcheck tools).
IMAGE_BINARIES = {
    "postgres": {"postgres", "pg_isready", "psql"},
    "redis": {"redis-server", "redis-cli"},
    "chrislusf/seaweedfs": {"server", "weed", "wget"},  # the image's entrypoint takes weed subcommands
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _command(value: Any) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def test_services_and_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "seaweedfs"} | AIRFLOW_SERVICES
    for name in AIRFLOW_SERVICES:
        build = services[name]["build"]
        assert (REPO / build["context"] / build["dockerfile"]).is_file(), name
        assert DOCKERFILES[build["dockerfile"]] == services[name]["image"], name
    assert services["airflow-worker-gpu"]["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    assert services["airflow-worker-cpu"]["build"]["dockerfile"] == "docker/Dockerfile"


def test_every_long_running_service_has_a_healthcheck_and_restarts(compose: dict[str, Any]) -> None:
    for name in LONG_RUNNING:
        service = compose["services"][name]
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert service.get("restart") == "unless-stopped", name
    assert compose["services"]["airflow-init"]["restart"] == "no"


def test_startup_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        depends = services[name]["depends_on"]
        assert depends["airflow-init"]["condition"] == "service_completed_successfully", name
        for backing in ("postgres", "redis", "seaweedfs"):
            assert depends[backing]["condition"] == "service_healthy", (name, backing)
    init = services["airflow-init"]["depends_on"]
    assert "airflow-init" not in init and init["postgres"]["condition"] == "service_healthy"


def test_airflow_environment_is_shared_and_celery(compose: dict[str, Any]) -> None:
    services = compose["services"]
    envs = {name: _env(services[name]) for name in AIRFLOW_SERVICES}
    for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
                "AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "AIRFLOW__API__SECRET_KEY"):
        values = {env.get(key) for env in envs.values()}
        assert len(values) == 1 and None not in values, f"{key} differs between Airflow services: {values}"
    env = envs["airflow-scheduler"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:6379")
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:")
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    # Tasks reach the Execution API on the api-server service, on the port it listens on.
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert services["airflow-apiserver"]["ports"][0].endswith(":8080")
    # No secret is written in the file: each comes from .env, and a missing one stops compose.
    text = COMPOSE.read_text()
    for secret in ("AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "POSTGRES_PASSWORD", "PATENTML_S3_SECRET_KEY",
                   "AIRFLOW_ADMIN_PASSWORD", "AIRFLOW_API_SECRET_KEY"):
        assert re.search(r"\$\{" + secret + r":\?", text), f"{secret} must be required from .env"
    example = (REPO / "docker" / "env.example").read_text()
    referenced = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    documented = set(re.findall(r"^([A-Z0-9_]+)=", example, re.M))
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    assert required <= documented, f"not in docker/env.example: {required - documented}"
    assert documented <= referenced, f"docker/env.example sets unused {documented - referenced}"


def _queues(service: dict[str, Any]) -> set[str]:
    command = _command(service["command"])
    return set(command[command.index("-q") + 1].split(","))


def test_workers_queues_pool_and_gpu_reservation(compose: dict[str, Any]) -> None:
    services = compose["services"]
    gpu, cpu = services["airflow-worker-gpu"], services["airflow-worker-cpu"]
    assert _command(gpu["command"])[:3] == ["airflow", "celery", "worker"]
    assert _queues(gpu) == {"gpu"}
    assert "gpu" not in _queues(cpu) and "default" in _queues(cpu)  # default: Airflow's default queue
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "deploy" not in cpu
    env = _env(gpu)
    assert env["PATENTML_TRAIN_QUEUE"] == "${PATENTML_TRAIN_QUEUE:-gpu}" and env["PATENTML_DEVICE"] == "cuda"
    assert env["PATENTML_TRAIN_POOL"] == "${PATENTML_TRAIN_POOL:-gpu}"
    init = (REPO / "docker" / "init.sh").read_text()
    assert 'POOL="${PATENTML_TRAIN_POOL:-gpu}"' in init and 'airflow pools set "$POOL"' in init


def test_volumes_are_declared_and_mounted(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    used: set[str] = set()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith(("./", "/", "${")):
                if source.startswith("./"):
                    assert (REPO / source).exists(), f"{name} mounts missing {source}"
                continue
            used.add(source)
    assert used == declared
    mounts = {v.split(":")[1] for v in compose["services"]["airflow-scheduler"]["volumes"]}
    assert {"/opt/airflow/logs", "/opt/airflow/patentml"} <= mounts  # logs shared with the api-server
    assert "postgres-data:/var/lib/postgresql/data" in compose["services"]["postgres"]["volumes"]
    assert "seaweedfs-data:/data" in compose["services"]["seaweedfs"]["volumes"]


def test_seaweedfs_requires_credentials(compose: dict[str, Any]) -> None:
    service = compose["services"]["seaweedfs"]
    command = _command(service["command"])
    assert "-s3" in command and "-s3.config=/etc/seaweedfs/s3.json" in command
    (config,) = service["configs"]
    assert config["target"] == "/etc/seaweedfs/s3.json"
    content = compose["configs"][config["source"]]["content"]
    rendered = json.loads(content.replace("${PATENTML_S3_ACCESS_KEY:?}", "k").replace("${PATENTML_S3_SECRET_KEY:?}", "s"))
    (identity,) = rendered["identities"]
    assert identity["credentials"] == [{"accessKey": "k", "secretKey": "s"}]


def _console_scripts() -> dict[str, str]:
    """Console script -> distribution, for the distributions the images install from requirements.txt."""
    pinned = {
        re.split(r"[=<>\[]", line, 1)[0].strip().lower().replace("_", "-")
        for line in (REPO / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    scripts: dict[str, str] = {"patentml": "patentml"}  # pyproject [project.scripts], installed by `pip install .`
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"].lower().replace("_", "-")
        if name in pinned:
            for ep in dist.entry_points:
                if ep.group == "console_scripts":
                    scripts[ep.name] = name
    return scripts


def _binaries(service: dict[str, Any]) -> list[str]:
    found = [_command(service["command"])[0]] if "command" in service else []
    test = service.get("healthcheck", {}).get("test")
    if test:
        if test[0] == "CMD":
            found.append(test[1])
        elif test[0] == "CMD-SHELL":
            found += [part.split()[0] for part in re.split(r"\|\||&&|;", test[1]) if part.strip() and part.split()[0] != "exit"]
    return found


def test_every_command_exists_in_its_image(compose: dict[str, Any]) -> None:
    scripts = _console_scripts()
    system = {"bash", "python", "curl", "tini"}  # python base image + apt-get install in the Dockerfiles
    for name, service in compose["services"].items():
        image = service["image"].split(":")[0]
        for binary in _binaries(service):
            if image in IMAGE_BINARIES:
                assert binary in IMAGE_BINARIES[image], f"{name}: {binary} is not in {image}"
            else:
                assert binary in scripts or binary in system, f"{name}: nothing installs {binary!r}"
    assert scripts["airflow"].startswith("apache-airflow") and scripts["celery"] == "celery"
    init = _command(compose["services"]["airflow-init"]["command"])
    assert init == ["bash", "/opt/patentml/docker/init.sh"]
    assert "COPY --chown=airflow:0 docker/init.sh /opt/patentml/docker/init.sh" in (REPO / "docker/Dockerfile").read_text()


@pytest.mark.parametrize("dockerfile", sorted(DOCKERFILES))
def test_dockerfiles(dockerfile: str) -> None:
    text = (REPO / dockerfile).read_text()
    assert re.search(r"^FROM python:3\.11-slim-bookworm$", text, re.M)
    assert "apt-get install -y --no-install-recommends curl libpq5 tini" in text
    assert "-r requirements.txt" in text and "--no-deps -r requirements-nodeps.txt" in text
    assert "pip install --no-deps ." in text
    assert re.search(r"^USER airflow$", text, re.M), "run as a non-root user"
    assert "AIRFLOW__CORE__DAGS_FOLDER=/opt/airflow/dags" in text and "AIRFLOW__CORE__PLUGINS_FOLDER=/opt/airflow/plugins" in text
    for source in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, re.M):
        for item in source.split():
            if "*" not in item:
                assert (REPO / item).exists(), f"{dockerfile}: COPY source {item} does not exist"
    ignore = (REPO / (dockerfile + ".dockerignore")).read_text()
    assert "**\n" in ignore and "!patentml/" in ignore and "!dags/" in ignore and "!plugins/" in ignore
    if dockerfile.endswith(".cuda"):
        assert "whl/cu" in text and "NVIDIA_VISIBLE_DEVICES=all" in text and "PATENTML_DEVICE=cuda" in text
    else:
        assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text


def test_shell_scripts_parse() -> None:
    for script in ("docker/init.sh", "docker/postgres-init.sh"):
        subprocess.run(["bash", "-n", str(REPO / script)], check=True)


def test_init_script_sets_up_connections_pool_and_bucket(pg_admin_url: str, db_url: str, tmp_path: Path) -> None:
    """docker/init.sh for real, on this machine: the same commands the compose init service runs."""
    from tests.s3server import SeaweedS3

    metadata = metadata_database(pg_admin_url, "compose-init")
    s3 = SeaweedS3.start(tmp_path / "s3")
    try:
        env = airflow_env(
            tmp_path / "airflow",
            metadata,
            {
                "PATENTML_DB_URL": db_url,
                "PATENTML_S3_ENDPOINT": s3.endpoint_url,
                "PATENTML_S3_ACCESS_KEY": s3.access_key_id,
                "PATENTML_S3_SECRET_KEY": s3.secret_access_key,
                "PATENTML_S3_BUCKET": "patentml-init",
                "AIRFLOW_ADMIN_PASSWORD": "pw",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp_path / "secrets" / "passwords.json"),
            },
        )
        for _ in range(2):  # idempotent: the init service may run on every `compose up`
            proc = subprocess.run(["bash", str(REPO / "docker" / "init.sh")], env=env, capture_output=True,
                                  text=True, timeout=300)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "bucket patentml-init exists" in proc.stdout
        assert s3.client().head_bucket(Bucket="patentml-init")["ResponseMetadata"]["HTTPStatusCode"] == 200
        assert json.loads((tmp_path / "secrets" / "passwords.json").read_text()) == {"admin": "pw"}
        pools = json.loads(run_airflow(["pools", "list", "-o", "json"], env).stdout)
        assert {"pool": "gpu", "slots": "1"}.items() <= {k: str(v) for k, v in next(p for p in pools if p["pool"] == "gpu").items()}.items()
        (db_conn,) = json.loads(run_airflow(["connections", "get", "patentml_db", "-o", "json"], env).stdout)
        (s3_conn,) = json.loads(run_airflow(["connections", "get", "patentml_s3", "-o", "json"], env).stdout)
        assert (db_conn["conn_type"], s3_conn["conn_type"]) == ("postgres", "aws")
        extra = s3_conn["extra_dejson"] if isinstance(s3_conn.get("extra_dejson"), dict) else json.loads(s3_conn["extra"])
        assert extra["endpoint_url"] == s3.endpoint_url and extra["store_uri"] == "s3://patentml-init/models"
        import psycopg2

        with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass('patents')")
            assert cur.fetchone()[0] == "patents"  # the PatentML schema was migrated
    finally:
        s3.stop()
        drop_metadata_database(pg_admin_url, metadata)
