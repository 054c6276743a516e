"""Failures are heard: a failed ``patent_retrain`` run e-mails the recipients of the SMTP Connection through
Airflow's notifier mechanism (a real SMTP server, aiosmtpd, on 127.0.0.1), and a training task whose
settings no retry can fix fails at its first try instead of being retried."""

from __future__ import annotations

import email
import json
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import text

from tests.airflow_env import airflow_env, connection_json, dag_test, drop_metadata_database, free_port, metadata_database

CORPUS = Path(__file__).parent / "fixtures" / "airflow_corpus.jsonl"
HOST = "127.0.0.1"


class Inbox:
    """What the SMTP server received: (envelope recipients, parsed message)."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Any]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's hook name
        self.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(envelope.content)))
        return "250 Message accepted for delivery"


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[int, Inbox]]:
    aiosmtpd = pytest.importorskip("aiosmtpd.controller", reason="needs aiosmtpd (requirements.txt)")
    inbox, port = Inbox(), free_port()
    controller = aiosmtpd.Controller(inbox, hostname=HOST, port=port)
    controller.start()
    try:
        yield port, inbox
    finally:
        controller.stop()


def _body(message: Any) -> str:
    parts = message.walk() if message.is_multipart() else [message]
    return "".join(p.get_payload(decode=True).decode("utf-8", "replace") for p in parts
                   if p.get_content_maintype() == "text")


def test_failed_runs_send_mail_and_bad_settings_are_not_retried(
        pg_admin_url: str, db_url: str, engine: Any, smtp: tuple[int, Inbox], tmp_path: Path) -> None:
    from patentml.ingest import ingest

    port, inbox = smtp
    metadata = metadata_database(pg_admin_url, "alerts")
    smtp_conn = {"conn_type": "smtp", "host": HOST, "port": port,
                 "extra": {"to": "ops@example.org, ml@example.org", "from_email": "patentml@example.org",
                           "disable_ssl": True, "disable_tls": True, "timeout": 10, "retry_limit": 1}}
    env = airflow_env(tmp_path / "airflow", metadata, {
        "AIRFLOW_CONN_PATENTML_DB": connection_json(db_url),
        "AIRFLOW_CONN_PATENTML_SMTP": json.dumps(smtp_conn),
        "PATENTML_HOME": str(tmp_path / "patentml"),
        "PATENTML_DEVICE": "cpu",
        "PATENTML_TASK_RETRIES": "0",
        "PATENTML_RETRAIN_DEADLINE_HOURS": "0",  # dag.test() in Airflow 3.3.2 cannot finish a run with a deadline
        "PATENTML_TRAIN_RETRIES": "2",  # would be retried, were the error one a retry could fix
        "PATENTML_TRAIN_RETRY_DELAY_SECONDS": "1",
    })
    try:
        (empty,) = dag_test(env, [{"dag_id": "patent_retrain", "conf": {"variants": ["tfidf-full"]}}])
        assert empty["state"] == "failed" and empty["tasks"]["rebuild_splits"] == "failed", empty["tasks"]
        assert len(inbox.messages) == 1, empty["output"][-3000:]
        recipients, message = inbox.messages[0]
        assert recipients == ["ops@example.org", "ml@example.org"] and message["From"] == "patentml@example.org"
        assert message["Subject"] == f"PatentML: patent_retrain run {empty['run_id']} failed"
        assert empty["run_id"] in _body(message)

        ingest(engine, [str(CORPUS)])
        conf = {"variants": ["tfidf-full"], "model_overrides": {"tfidf": {"no_such_setting": 1}}}
        (bad,) = dag_test(env, [{"dag_id": "patent_retrain", "conf": conf}])
        assert bad["state"] == "failed"
        assert (bad["tasks"]["variant.train[0]"], bad["tries"]["variant.train[0]"]) == ("failed", 1), (
            bad["tasks"], bad["tries"])
        with engine.connect() as conn:  # refused before a run row existed
            assert conn.execute(text("SELECT count(*) FROM runs")).scalar() == 0
        assert [m["Subject"] for _, m in inbox.messages][1:] == [f"PatentML: patent_retrain run {bad['run_id']} failed"]
    finally:
        drop_metadata_database(pg_admin_url, metadata)
