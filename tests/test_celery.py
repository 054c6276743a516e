"""The Celery path for real: Redis, api-server, scheduler, dag-processor, a Celery worker on queue ``gpu``
and one on the default queue, as separate processes (the compose stack's layout). A tiny
``patent_retrain`` run and the worker check run under the real scheduler: training tasks are
executed by the ``gpu`` worker only, everything else by the CPU worker."""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests import system
from tests.airflow_env import (
    AIRFLOW,
    HOST,
    ApiServer,
    Component,
    airflow_env,
    connection_json,
    drop_metadata_database,
    free_port,
    http,
    metadata_database,
    run_airflow,
    stop_all,
    sqlalchemy_url,
    wait_until,
    write_passwords,
)

GPU_WORKER = "patentml-gpu-worker-under-test"
CPU_WORKER = "patentml-cpu-worker-under-test"
CHECK_DAG = "patentml_worker_check"
RETRAIN_DAG = "patent_retrain"
CORPUS = Path(__file__).parent / "fixtures" / "airflow_corpus.jsonl"

pytestmark = system.needs("redis-server")


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _get(api: ApiServer, token: str, path: str) -> Any:
    status, body = http("GET", api.base + path, token=token)
    return json.loads(body) if status == 200 else None


def test_training_tasks_run_on_the_gpu_celery_worker(
    pg_admin_url: str, db_url: str, engine: Any, tmp_path: Path
) -> None:
    from patentml.ingest import ingest

    ingest(engine, [str(CORPUS)])
    started = time.monotonic()
    home = tmp_path / "airflow"
    logs = tmp_path / "logs"
    metadata = metadata_database(pg_admin_url, "celery")
    redis_port, api_port = free_port(), free_port()
    env = airflow_env(
        home,
        metadata,
        {
            **write_passwords(home),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": f"redis://{HOST}:{redis_port}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + sqlalchemy_url(metadata),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{HOST}:{api_port}/execution/",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            # Tasks reach the PatentML database through the Connection; models go to a file store.
            "AIRFLOW_CONN_PATENTML_DB": connection_json(db_url),
            "PATENTML_HOME": str(tmp_path / "patentml"),
            "PATENTML_DEVICE": "cpu",
            "PATENTML_TASK_RETRIES": "0",
            "PATENTML_TRAIN_RETRIES": "0",
        },
    )
    # Each worker names itself: TI.hostname then proves which worker executed a task.
    (home / "config").mkdir(parents=True, exist_ok=True)
    (home / "config" / "patentml_test_hostname.py").write_text(
        "import os\n\ndef hostname():\n    return os.environ['PATENTML_TEST_WORKER_NAME']\n"
    )

    def worker_env(name: str) -> dict[str, str]:
        return {**env, "AIRFLOW__CORE__HOSTNAME_CALLABLE": "patentml_test_hostname.hostname",
                "PATENTML_TEST_WORKER_NAME": name, "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())}

    run_airflow(["pools", "set", "gpu", "1", "training slots"], env, timeout=120)
    processes: list[Component] = []
    try:
        redis = Component(
            "redis",
            [shutil.which("redis-server") or "redis-server", "--bind", HOST, "--port", str(redis_port), "--save", "",
             "--appendonly", "no", "--dir", str(tmp_path)],
            {},
            logs,
        )
        processes.append(redis)
        wait_until(lambda: _redis_ping(redis_port), 20, "redis PONG", [redis])
        api = ApiServer(env, logs, port=api_port)
        processes.append(api.component)
        processes.append(Component("scheduler", [AIRFLOW, "scheduler", "--skip-serve-logs"], env, logs))
        processes.append(Component("dag-processor", [AIRFLOW, "dag-processor"], env, logs))
        for name, queues, hostname in (("gpu-worker", "gpu", GPU_WORKER), ("cpu-worker", "default,cpu", CPU_WORKER)):
            processes.append(Component(
                name,
                [AIRFLOW, "celery", "worker", "-q", queues, "--concurrency", "1", "--skip-serve-logs",
                 "--celery-hostname", f"{name}@patentml-test", "--without-mingle", "--without-gossip"],
                worker_env(hostname),
                logs,
            ))
        token = api.token("admin")
        confs = {
            CHECK_DAG: {"check_torch": False, "check_database": True},
            RETRAIN_DAG: {"variants": ["tfidf-full"], "epochs": 1, "model_overrides": {"num_filters": 8}},
        }
        run_ids = {}
        for dag_id, conf in confs.items():
            wait_until(lambda: _get(api, token, f"/api/v2/dags/{dag_id}"), 120, f"{dag_id} to be parsed", processes)
            status, body = http("PATCH", api.base + f"/api/v2/dags/{dag_id}", token=token, body={"is_paused": False})
            assert status == 200, body[:300]
            status, body = http("POST", api.base + f"/api/v2/dags/{dag_id}/dagRuns", token=token,
                                body={"logical_date": None, "conf": conf})
            assert status == 200, body[:500]
            run_ids[dag_id] = json.loads(body)["dag_run_id"]
        triggered = time.monotonic()

        def finished(dag_id: str) -> Any:
            run = _get(api, token, f"/api/v2/dags/{dag_id}/dagRuns/{run_ids[dag_id]}")
            return run if run and run["state"] in ("success", "failed") else None

        results = {dag_id: wait_until(lambda d=dag_id: finished(d), 300, f"{dag_id} to finish", processes)
                   for dag_id in confs}
        tis = {
            dag_id: _get(api, token, f"/api/v2/dags/{dag_id}/dagRuns/{run_ids[dag_id]}/taskInstances")["task_instances"]
            for dag_id in confs
        }
        logs_text = "\n".join(f"--- {p.name} ---\n{p.tail(3000)}" for p in processes)
        for dag_id, run in results.items():
            assert run["state"] == "success", f"{dag_id}: {run}\n{tis[dag_id]}\n{logs_text}"

        (probe,) = tis[CHECK_DAG]
        assert (probe["state"], probe["queue"], probe["pool"], probe["hostname"]) == ("success", "gpu", "gpu", GPU_WORKER)
        xcom = _get(api, token, f"/api/v2/dags/{CHECK_DAG}/dagRuns/{run_ids[CHECK_DAG]}/taskInstances/probe/xcomEntries/return_value")
        value = xcom["value"] if isinstance(xcom["value"], dict) else json.loads(xcom["value"])
        assert value["database"] == urlsplit(db_url).path.lstrip("/")

        placed = {(ti["task_id"], ti["map_index"]): (ti["state"], ti["queue"], ti["pool"], ti["hostname"])
                  for ti in tis[RETRAIN_DAG]}
        assert placed[("variant.train", 0)] == ("success", "gpu", "gpu", GPU_WORKER), placed
        for task_id in ("rebuild_splits", "plan_variants", "promote", "report"):
            assert placed[(task_id, -1)] == ("success", "default", "default_pool", CPU_WORKER), (task_id, placed)
        assert placed[("variant.evaluate", 0)] == ("success", "default", "default_pool", CPU_WORKER)
        with engine.connect() as conn:
            from sqlalchemy import text

            decisions = [tuple(r) for r in conn.execute(text("SELECT action, promoted, reason FROM promotions"))]
            runs = [tuple(r) for r in conn.execute(text("SELECT run_id, variant, status, host FROM runs"))]
        all_runs = _get(api, token, f"/api/v2/dags/{RETRAIN_DAG}/dagRuns")
        assert decisions[0][:2] == ("first", True), (decisions, runs, all_runs)
        assert len(decisions) == 1 and [r[1:3] for r in runs] == [("tfidf-full", "succeeded")], (
            decisions, runs, [(r["dag_run_id"], r["run_type"], r.get("logical_date")) for r in all_runs["dag_runs"]])
        print(
            f"\nCelery: stack up and both runs done in {time.monotonic() - started:.1f} s "
            f"({time.monotonic() - triggered:.1f} s after the triggers); train ran on {GPU_WORKER}, "
            f"the other {len(placed) - 1} retrain tasks on {CPU_WORKER}"
        )
    finally:
        stopping = time.monotonic()
        stop_all(processes)
        print(f"stack stopped in {time.monotonic() - stopping:.1f} s")
        drop_metadata_database(pg_admin_url, metadata)
