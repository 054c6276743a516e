"""Airflow for tests: a private AIRFLOW_HOME and this repository's dags/ and plugins/, set before ``import airflow``.

Importing this module configures the pytest process itself (for in-process DagBag parsing). Tests
that need a metadata database run Airflow in subprocesses (``airflow db migrate``, ``dags test``,
api-server, scheduler, Celery worker) with :func:`airflow_env`, each on its own database of the
session's embedded Postgres, so no test shares Airflow state with another.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import parse_qs, urlsplit

REPO = Path(__file__).resolve().parent.parent
DAGS = REPO / "dags"
PLUGINS = REPO / "plugins"
BIN = Path(sys.executable).parent
AIRFLOW = str(BIN / "airflow")
HOST = "127.0.0.1"
JWT_SECRET = "patentml-tests-" + uuid.uuid4().hex
#: Users of the api-server in tests (SimpleAuthManager): name -> (role, password).
USERS = {"admin": ("admin", "admin-pw"), "viewer": ("viewer", "viewer-pw")}

_PROCESS_HOME = Path(tempfile.mkdtemp(prefix="patentml-airflow-"))
atexit.register(shutil.rmtree, _PROCESS_HOME, True)


def _settings(home: Path) -> dict[str, str]:
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__API_AUTH__JWT_SECRET": JWT_SECRET,
        "AIRFLOW__API__HOST": HOST,
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        # The worker/triggerer log servers bind all interfaces on fixed ports: never in tests.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def configure_process() -> Path:
    """Point this process's Airflow at a private home and the repo's dags/plugins (before ``import airflow``)."""
    if "airflow" in sys.modules:
        from airflow.configuration import conf

        if Path(conf.get("core", "dags_folder")).resolve() != DAGS.resolve():
            raise RuntimeError(
                "airflow was imported before tests/airflow_env.py configured it; import airflow_env first"
            )
        return Path(os.environ["AIRFLOW_HOME"])
    for key, value in _settings(_PROCESS_HOME).items():
        os.environ[key] = value
    # Airflow puts plugins/ on sys.path at import; tests of patentml_airflow may run before that.
    if str(PLUGINS) not in sys.path:
        sys.path.append(str(PLUGINS))
    return _PROCESS_HOME


configure_process()


# -- subprocess environment -----------------------------------------------------------------------
def sqlalchemy_url(url: str) -> str:
    """``postgresql://`` -> ``postgresql+psycopg2://`` (what Airflow's metadata connection wants)."""
    scheme, _, rest = url.partition("://")
    return "postgresql+psycopg2://" + rest if scheme in ("postgresql", "postgres") else url


def connection_json(url: str) -> str:
    """A Postgres Airflow Connection (``AIRFLOW_CONN_*`` JSON) for a libpq URL, socket folders included."""
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    host = query.pop("host", None) or parts.hostname or ""
    return json.dumps(
        {
            "conn_type": "postgres",
            "host": host,
            "port": parts.port,
            "login": parts.username or "",
            "password": parts.password or "",
            "schema": parts.path.lstrip("/"),
            "extra": query,
        }
    )


def airflow_env(
    home: Path,
    metadata_url: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The full environment of an Airflow subprocess: nothing inherited from AIRFLOW*/PATENTML_* vars."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PATENTML_", "_AIRFLOW"))}
    home.mkdir(parents=True, exist_ok=True)
    env.update(_settings(home))
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    if metadata_url:
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = sqlalchemy_url(metadata_url)
    if extra:
        env.update(extra)
    return env


def run_airflow(args: list[str], env: Mapping[str, str], timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one ``airflow`` CLI command; on failure the error names the command and shows its output tail."""
    proc = subprocess.run(
        [AIRFLOW, *args], env=dict(env), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"airflow {' '.join(args)} exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}"
            f"\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


# -- metadata databases ---------------------------------------------------------------------------
_TEMPLATES: dict[str, str] = {}


def _admin_exec(admin_url: str, sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(admin_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def _with_db(url: str, name: str) -> str:
    return urlsplit(url)._replace(path="/" + name).geturl()


def metadata_database(admin_url: str, label: str) -> str:
    """A migrated Airflow metadata database of its own: ``airflow db migrate`` runs once per session
    into a template database, and each caller gets a copy of it (``CREATE DATABASE ... TEMPLATE``)."""
    template = _TEMPLATES.get(admin_url)
    if template is None:
        name = "airflow_template_" + uuid.uuid4().hex[:8]
        _admin_exec(admin_url, f'CREATE DATABASE "{name}"')
        home = _PROCESS_HOME / ("migrate-" + name)
        started = time.monotonic()
        run_airflow(["db", "migrate"], airflow_env(home, _with_db(admin_url, name)), timeout=300)
        print(f"airflow db migrate (template {name}): {time.monotonic() - started:.1f} s")
        _TEMPLATES[admin_url] = template = name
        atexit.register(_drop_quietly, admin_url, name)
    name = "airflow_" + re.sub(r"[^a-z0-9]+", "_", label.lower())[-30:] + "_" + uuid.uuid4().hex[:6]
    _admin_exec(admin_url, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return _with_db(admin_url, name)


def _drop_quietly(admin_url: str, name: str) -> None:
    with contextlib.suppress(Exception):
        _admin_exec(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def drop_metadata_database(admin_url: str, url: str) -> None:
    _drop_quietly(admin_url, urlsplit(url).path.lstrip("/"))


# -- long-running components ----------------------------------------------------------------------
class Component:
    """One Airflow process (api-server, scheduler, ...) with its output in a log file; stopped by its PID."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            args,
            env=dict(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopped with its children, never by name
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, size: int = 5000) -> str:
        try:
            return self.log_path.read_bytes()[-size:].decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def terminate(self) -> None:
        """SIGTERM to the process group this component leads."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)

    def finish(self, grace: float = 15.0) -> None:
        """Wait for the leader to exit (SIGKILL after ``grace``), then kill whatever is left in its group."""
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        # Children that outlived the leader (LocalExecutor/Celery pool workers) share its group id.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()

    def stop(self, grace: float = 15.0) -> None:
        self.terminate()
        self.finish(grace)


def stop_all(items: "list[Component]", grace: float = 15.0) -> None:
    """Stop several components at once: all get SIGTERM first, then each is waited for."""
    for item in items:
        item.terminate()
    for item in items:
        item.finish(grace)


def wait_until(check: Callable[[], Any], timeout: float, what: str, components: list[Component] = ()) -> Any:  # type: ignore[assignment]
    """Poll ``check`` until it returns something truthy; fail with the components' log tails."""
    deadline = time.monotonic() + timeout
    while True:
        for component in components:
            if not component.alive():
                raise AssertionError(f"{component.name} exited ({component.process.returncode}) while waiting for {what}:\n{component.tail()}")
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {c.name} ---\n{c.tail()}" for c in components)
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")
        time.sleep(0.5)


def http(method: str, url: str, token: str | None = None, body: Any = None, cookie: str | None = None,
         timeout: float = 30) -> tuple[int, str]:
    """(status, body text) of one request; HTTP errors are returned, not raised."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if cookie:
        request.add_header("Cookie", cookie)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout):
        return 0, ""


def write_passwords(home: Path) -> dict[str, str]:
    """SimpleAuthManager users with known passwords (Airflow only generates passwords for missing users)."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "passwords.json"
    path.write_text(json.dumps({name: pw for name, (_, pw) in USERS.items()}))
    return {
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(path),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{n}:{role}" for n, (role, _) in USERS.items()),
    }


class ApiServer:
    """``airflow api-server`` on 127.0.0.1 and a free port, with login helpers."""

    def __init__(self, env: Mapping[str, str], log_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.base = f"http://{HOST}:{self.port}"
        env = {**env, "AIRFLOW__API__PORT": str(self.port), "AIRFLOW__API__BASE_URL": self.base}
        self.component = Component("api-server", [AIRFLOW, "api-server", "-w", "1"], env, log_dir)
        wait_until(
            lambda: http("GET", self.base + "/api/v2/monitor/health", timeout=2)[0] == 200,
            120,
            "the api-server health endpoint",
            [self.component],
        )
        self.startup_seconds = time.monotonic() - self.component.started

    @property
    def execution_api(self) -> str:
        return self.base + "/execution/"

    def token(self, user: str = "admin") -> str:
        status, text = http("POST", self.base + "/auth/token", body={"username": user, "password": USERS[user][1]})
        assert status in (200, 201), f"login as {user} failed: {status} {text[:300]}"
        return json.loads(text)["access_token"]

    def stop(self) -> None:
        self.component.stop()




# -- dag.test() in a subprocess -------------------------------------------------------------------
DAG_TEST_RUNNER = r'''
import datetime as dt, json, os, sys, time
from airflow.dag_processing.dagbag import DagBag
from airflow.models.asset import AssetEvent
from airflow.models.taskinstance import TaskInstance
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session

bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
if bag.import_errors:
    raise SystemExit(f"DAG import errors: {bag.import_errors}")
for spec in json.loads(sys.argv[1]):
    dag = bag.dags[spec["dag_id"]]
    kwargs = {"run_conf": spec.get("conf") or None}
    if "logical_date" in spec:  # null: a run without a logical date, as a manual trigger from the UI makes
        kwargs["logical_date"] = spec["logical_date"] and dt.datetime.fromisoformat(spec["logical_date"])
    started = time.monotonic()
    run = dag.test(**kwargs)
    seconds = time.monotonic() - started
    with create_session() as session:
        tis = session.query(TaskInstance).filter_by(dag_id=dag.dag_id, run_id=run.run_id).all()
        events = session.query(AssetEvent).filter_by(source_dag_id=dag.dag_id, source_run_id=run.run_id).all()
        result = {
            "dag_id": dag.dag_id, "run_id": run.run_id, "state": str(run.state), "seconds": seconds,
            "data_interval": [str(run.data_interval_start), str(run.data_interval_end)],
            "tasks": {f"{ti.task_id}[{ti.map_index}]" if ti.map_index >= 0 else ti.task_id: str(ti.state) for ti in tis},
            "tries": {f"{ti.task_id}[{ti.map_index}]" if ti.map_index >= 0 else ti.task_id: ti.try_number for ti in tis},
            "rendered_map_index": {f"{ti.task_id}[{ti.map_index}]": ti.rendered_map_index for ti in tis if ti.map_index >= 0},
            "asset_events": [{"uri": e.uri if hasattr(e, "uri") else None, "extra": e.extra} for e in events],
            # What the unmapped tasks returned (e.g. promote's decision), by task id.
            "xcoms": {x.task_id: XComModel.deserialize_value(x) for x in session.query(XComModel).filter_by(
                dag_id=dag.dag_id, run_id=run.run_id, key="return_value", map_index=-1)},
        }
    print("DAGTEST " + json.dumps(result, default=str), flush=True)
'''


def dag_test(env: Mapping[str, str], runs: list[dict[str, Any]], timeout: float = 900) -> list[dict[str, Any]]:
    """Run ``dag.test()`` for each ``{"dag_id", "conf", "logical_date"}`` in one fresh process (the
    Airflow start-up is paid once) and return one result per run: state, task states, asset events.
    Without ``logical_date`` the run's logical date is now (dag.test's default); ``None`` gives none."""
    proc = subprocess.run(
        [sys.executable, "-c", DAG_TEST_RUNNER, json.dumps(runs)],
        env=dict(env), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, cwd=REPO,
    )
    results = [json.loads(line[len("DAGTEST "):]) for line in proc.stdout.splitlines() if line.startswith("DAGTEST ")]
    output = f"--- stdout (tail) ---\n{proc.stdout[-12000:]}\n--- stderr (tail) ---\n{proc.stderr[-6000:]}"
    if proc.returncode != 0 or len(results) != len(runs):
        raise AssertionError(f"dag.test runner exited {proc.returncode} after {len(results)} of {len(runs)} runs\n{output}")
    for result in results:
        result["output"] = output
    return results
