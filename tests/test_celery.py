"""Two simulated hosts through the real Celery path: Redis, api-server, scheduler, dag-processor, and two
Celery workers with their own ``PATENTML_HOME`` (no shared disk) and host names, one on queue ``gpu``,
one on the default queue; SeaweedFS is the model store. A tiny ``patent_retrain`` run (TF-IDF, a
4-epoch GloVe+CNN, their blend) trains on host A; evaluation, blend and promotion run on host B from
artifacts fetched out of the store. The first try of the CNN is SIGKILLed after its second epoch and
its work folder deleted (a lost host): the retry resumes the same run at epoch 3 from the store. The
promotion waits for a person, who approves it through the REST API; the champion Asset is updated."""

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

GPU_WORKER = "patentml-host-a"
CPU_WORKER = "patentml-host-b"
BUCKET = "patentml-cluster"
CNN = "glove-wbce-full"
#: Imported by Airflow in every worker process (the hostname callable). On host A it also plays a lost
#: host once: after the CNN's second epoch reached the store, delete the run's work folder and SIGKILL.
HOSTNAME_MODULE = """
import os

def hostname():
    return os.environ["PATENTML_TEST_WORKER_NAME"]

if os.environ.get("PATENTML_TEST_KILL_FLAG"):
    import shutil, signal
    from pathlib import Path

    import patentml.runstore as runstore

    _real_save, _flag, _saved = runstore.StoreCheckpoints.save, Path(os.environ["PATENTML_TEST_KILL_FLAG"]), []

    def save(self, files):
        _real_save(self, files)
        _saved.append(files)
        if len(_saved) == 2 and not _flag.exists():
            _flag.write_text(str(self.run_id))
            shutil.rmtree(files[-1].parent)
            os.kill(os.getpid(), signal.SIGKILL)

    runstore.StoreCheckpoints.save = save
"""
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


def test_two_hosts_train_resume_and_promote_through_the_store(
    pg_admin_url: str, db_url: str, engine: Any, seaweed: Any, tmp_path: Path
) -> None:
    from sqlalchemy import text

    from patentml.ingest import ingest

    ingest(engine, [str(CORPUS)])
    seaweed.create_bucket(BUCKET)
    started = time.monotonic()
    home = tmp_path / "airflow"
    logs = tmp_path / "logs"
    metadata = metadata_database(pg_admin_url, "celery")
    redis_port, api_port = free_port(), free_port()
    s3_conn = json.loads(seaweed.airflow_connection())
    s3_conn["extra"]["store_uri"] = f"s3://{BUCKET}/models"
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
            # Tasks reach the PatentML database and the S3 store through the Connections.
            "AIRFLOW_CONN_PATENTML_DB": connection_json(db_url),
            "AIRFLOW_CONN_PATENTML_S3": json.dumps(s3_conn),
            "PATENTML_DEVICE": "cpu",
            "PATENTML_THREADS": "1",
            "PATENTML_TASK_RETRIES": "0",
            "PATENTML_TRAIN_RETRIES": "1",
            "PATENTML_TRAIN_RETRY_DELAY_SECONDS": "1",
        },
    )
    (home / "config").mkdir(parents=True, exist_ok=True)
    (home / "config" / "patentml_test_hostname.py").write_text(HOSTNAME_MODULE)
    kill_flag = tmp_path / "host-a-lost"

    def worker_env(name: str, **extra: str) -> dict[str, str]:
        # Each worker is a host of its own: its own PATENTML_HOME (caches, run folders), its own name.
        return {**env, "AIRFLOW__CORE__HOSTNAME_CALLABLE": "patentml_test_hostname.hostname",
                "PATENTML_TEST_WORKER_NAME": name, "PATENTML_HOME": str(tmp_path / name),
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()), **extra}

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
        for name, queues, hostname, extra in (
                ("gpu-worker", "gpu", GPU_WORKER, {"PATENTML_TEST_KILL_FLAG": str(kill_flag)}),
                ("cpu-worker", "default,cpu", CPU_WORKER, {})):
            processes.append(Component(
                name,
                [AIRFLOW, "celery", "worker", "-q", queues, "--concurrency", "1", "--skip-serve-logs",
                 "--celery-hostname", f"{name}@patentml-test", "--without-mingle", "--without-gossip"],
                worker_env(hostname, **extra),
                logs,
            ))
        token = api.token("admin")
        confs = {
            CHECK_DAG: {"check_torch": False, "check_database": True},
            RETRAIN_DAG: {"variants": ["tfidf-full", CNN], "epochs": 4, "batch_size": 16, "approve_promotion": True,
                          "model_overrides": {"num_filters": 8, "hidden": 16, "patience": 10}},
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
        retrain_run = f"/api/v2/dags/{RETRAIN_DAG}/dagRuns/{run_ids[RETRAIN_DAG]}"

        def task_state(task_id: str) -> Any:
            ti = _get(api, token, f"{retrain_run}/taskInstances/{task_id}")
            return ti and ti["state"]

        # The promotion is held: approve it as a person would under Required actions.
        wait_until(lambda: task_state("approve_promotion") == "awaiting_input", 900, "the approval request",
                   processes)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM promotions")).scalar() == 0  # nothing applied yet
        status, body = http("PATCH", api.base + f"{retrain_run}/taskInstances/approve_promotion/-1/hitlDetails",
                            token=token, body={"chosen_options": ["Approve"], "params_input": {}})
        assert status == 200, body[:500]

        def finished(dag_id: str) -> Any:
            run = _get(api, token, f"/api/v2/dags/{dag_id}/dagRuns/{run_ids[dag_id]}")
            return run if run and run["state"] in ("success", "failed") else None

        results = {dag_id: wait_until(lambda d=dag_id: finished(d), 600, f"{dag_id} to finish", processes)
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

        placed = {(ti["task_id"], ti["map_index"]): (ti["state"], ti["queue"], ti["pool"], ti["hostname"], ti["try_number"])
                  for ti in tis[RETRAIN_DAG]}
        table = "\n".join(f"  {task}{'' if index < 0 else f'[{index}]'}: {host} (queue {queue}, try {tries}, {state})"
                          for (task, index), (state, queue, _, host, tries) in sorted(placed.items()))
        print(f"\ntask instance -> host:\n{table}")
        for index in (0, 1):
            assert placed[("variant.train", index)][:4] == ("success", "gpu", "gpu", GPU_WORKER), placed
            assert placed[("variant.evaluate", index)][:4] == ("success", "default", "default_pool", CPU_WORKER)
        for task_id in ("rebuild_splits", "plan_variants", "blend", "promote", "approve_promotion",
                        "apply_promotion", "publish_champion", "report"):
            assert placed[(task_id, -1)][:4] == ("success", "default", "default_pool", CPU_WORKER), (task_id, placed)

        with engine.connect() as conn:
            runs = {r.variant: r for r in conn.execute(text(
                "SELECT run_id, variant, status, host, epochs_done, try_number, dag_run_id, task_id, map_index, "
                "artifact_store, artifact_id FROM runs"))}
            epochs = conn.execute(text("SELECT epoch FROM run_epochs WHERE run_id = :r ORDER BY epoch"),
                                  {"r": runs[CNN].run_id}).scalars().all()
            scores = {r.run_id: (r.f1, r.p_at_1) for r in conn.execute(text(
                "SELECT m.run_id, m.f1, m.p_at_1 FROM run_metrics m JOIN runs USING (run_id) "
                "WHERE m.split = 'test' AND m.rule = runs.rule"))}
            decisions = [dict(r._mapping) for r in conn.execute(text("SELECT * FROM promotions"))]
        assert sorted(runs) == sorted(["tfidf-full", CNN, "ensemble-full"])
        assert all(r.status == "succeeded" and r.artifact_store == f"s3://{BUCKET}/models" for r in runs.values())
        # The retry continued the same run from the store: one row, try 2, epochs 1-4 once each.
        cnn = runs[CNN]
        assert (cnn.try_number, cnn.epochs_done, epochs) == (2, 4, [1, 2, 3, 4]), (cnn, epochs)
        assert (cnn.dag_run_id, cnn.task_id) == (run_ids[RETRAIN_DAG], "variant.train")
        assert kill_flag.read_text() == str(cnn.run_id)
        assert placed[("variant.train", cnn.map_index)][4] == 2
        attempt = next((home / "logs").rglob(f"*map_index={cnn.map_index}*/attempt=2.log"))
        resumed = [line for line in attempt.read_text().splitlines() if "Resuming from" in line or "restored" in line]
        assert any("at epoch 3 (epochs 1-2 done)" in line for line in resumed), resumed
        print("retried CNN training task: run", cnn.run_id, "epochs", epochs, "\n  " + "\n  ".join(resumed))
        # No task read another host's disk: host B never held host A's run folders; it fetched their candidates.
        trained_on_a = [runs["tfidf-full"], cnn]
        assert not any((tmp_path / CPU_WORKER / "runs" / str(r.run_id)).exists() for r in trained_on_a)
        fetched = {p.name for p in (tmp_path / CPU_WORKER / "cache" / "models").iterdir()}
        assert {r.artifact_id for r in trained_on_a} <= fetched, fetched
        # The right champion: the best candidate by F1 (ties by P@1), approved, and published as an Asset.
        (decision,) = decisions
        best = max(runs.values(), key=lambda r: (*scores[r.run_id], -r.run_id))
        assert decision["promoted"] and decision["challenger_run_id"] == best.run_id, (decision, scores)
        from patentml.settings import Settings
        from patentml.store import open_store

        store = open_store(Settings(home=tmp_path / "reader", **seaweed.settings_overrides(f"s3://{BUCKET}/models")))
        assert store.get_pointer() == decision["champion_after"]
        events = _get(api, token, "/api/v2/assets/events?source_dag_id=patent_retrain")["asset_events"]
        assert [e["extra"]["model_id"] for e in events] == [decision["champion_after"]]
        print(
            f"\nCelery: stack up and both runs done in {time.monotonic() - started:.1f} s "
            f"({time.monotonic() - triggered:.1f} s after the triggers); champion {decision['champion_after']} "
            f"(run {best.run_id}, {best.variant}, test F1 {scores[best.run_id][0]:.4f})"
        )
    finally:
        stopping = time.monotonic()
        stop_all(processes)
        print(f"stack stopped in {time.monotonic() - stopping:.1f} s")
        drop_metadata_database(pg_admin_url, metadata)
