"""
### patentml_worker_check: is a worker serving the training queue, and what can it use?

Manual only. One task in the training pool and queue (`PATENTML_TRAIN_POOL` / `PATENTML_TRAIN_QUEUE`,
default `gpu`) reports the worker's host name, Python, torch and CUDA devices, and whether it
reaches the PatentML database through the `patentml_db` Connection. Run it after deploying or
scaling the GPU workers: if it stays queued, no worker listens on the queue or the pool is missing
(`airflow pools set gpu 1 "training slots"`).
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task

from patentml_airflow.config import DagConfig

CONFIG = DagConfig.from_env()


@dag(
    dag_id="patentml_worker_check",
    schedule=None,
    start_date=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    tags=["patentml", "ops"],
    doc_md=__doc__,
    default_args={"owner": "patentml", "retries": 0},
    params={
        "check_torch": Param(True, type="boolean", title="Import torch and list CUDA devices"),
        "check_database": Param(True, type="boolean", title="Connect to the PatentML database"),
    },
)
def patentml_worker_check() -> None:
    @task(
        pool=CONFIG.train_pool,
        queue=CONFIG.train_queue,
        retries=0,
        execution_timeout=dt.timedelta(minutes=10),
    )
    def probe(params: dict) -> dict:
        """What this worker offers a training task."""
        import platform
        import socket

        info: dict = {"hostname": socket.gethostname(), "python": platform.python_version()}
        if params.get("check_torch"):
            import torch

            info["torch"] = torch.__version__
            info["cuda"] = torch.cuda.is_available()
            info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if params.get("check_database"):
            from sqlalchemy import text

            from patentml_airflow.hook import PatentMLHook

            with PatentMLHook().get_engine(migrate=False).connect() as conn:
                info["database"] = conn.execute(text("SELECT current_database()")).scalar()
        print(info)
        return info

    probe()


patentml_worker_check()
