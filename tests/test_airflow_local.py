"""scripts/airflow-local: Airflow on the embedded Postgres (own database), four separate components,
the PatentML page served, and Ctrl-C stops every process it started."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

from tests.airflow_env import BIN, REPO, free_port, http, wait_until

COMPONENTS = {"api-server", "scheduler", "dag-processor", "triggerer"}


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PATENTML_", "_AIRFLOW"))}
    env.update(extra)
    return env


def test_launcher_starts_airflow_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    home = tmp_path / "patentml-home"
    port = free_port()
    env = _clean_env(
        PATENTML_HOME=str(home),
        AIRFLOW_PORT=str(port),
        # The log servers bind all interfaces on fixed ports by default: pick free ones here.
        AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
        AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(free_port()),
    )
    log = (tmp_path / "launcher.log").open("wb")
    started = time.monotonic()
    launcher = subprocess.Popen(
        [str(REPO / "scripts" / "airflow-local"), "--no-login"], env=env, stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True,  # its own group: Ctrl-C is sent to it below
        # A shell started with SIGINT ignored (as under `nohup ... &`) cannot trap it: start it as a
        # terminal would, with SIGINT at its default, whatever the test runner inherited.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    descendants: list[psutil.Process] = []
    try:
        def ready() -> bool:
            assert launcher.poll() is None, (tmp_path / "launcher.log").read_text()[-4000:]
            return "Airflow is up" in (tmp_path / "launcher.log").read_text()

        wait_until(ready, 240, "scripts/airflow-local to report Airflow up")
        up = time.monotonic() - started
        status, page = http("GET", f"http://127.0.0.1:{port}/patentml/")
        assert status == 200 and "No training runs yet" in page, page[:500]
        wait_until(lambda: http("GET", f"http://127.0.0.1:{port}/api/v2/dags/patent_retrain")[0] == 200,
                   120, "the dag-processor to parse patent_retrain")
        text = (tmp_path / "launcher.log").read_text()
        assert {line.split()[1] for line in text.splitlines() if line.startswith("started ")} == COMPONENTS
        # Metadata in the PatentML server's own `airflow` database.
        assert "database 'airflow' on the PatentML Postgres" in text
        assert (home / "airflow" / "airflow.cfg").exists()
        descendants = [p for p in psutil.Process(launcher.pid).children(recursive=True) if "postgres" not in p.name()]
        assert len(descendants) >= 4
        interrupted = time.monotonic()
        os.killpg(launcher.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        launcher.wait(timeout=90)
        stop_seconds = time.monotonic() - interrupted
        assert launcher.returncode == 130
        leftovers = []
        for proc in descendants:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    leftovers.append(f"{proc.pid} {proc.cmdline()}")
            except psutil.NoSuchProcess:
                pass
        assert leftovers == [], leftovers
        assert "stopped: api-server scheduler dag-processor triggerer" in (tmp_path / "launcher.log").read_text()
        print(f"\nairflow-local: up in {up:.1f} s, stopped in {stop_seconds:.1f} s after Ctrl-C "
              f"({len(descendants)} processes, none left)")
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait(timeout=30)
        for proc in descendants:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        log.close()
        subprocess.run([str(BIN / "patentml"), "db", "stop"], env=_clean_env(PATENTML_HOME=str(home)),
                       capture_output=True, timeout=60)
