"""Failure e-mails through Airflow's notifier mechanism (the SMTP provider), and the nightly run's deadline.

Recipients come from ``PATENTML_ALERT_EMAILS`` (comma-separated) or, when that is empty, from the
``to`` extra of the SMTP Connection (``PATENTML_ALERT_SMTP_CONN``, default ``patentml_smtp``), read
when a notification is sent, never at parse time. With neither, a notification is logged and
dropped: an alert must never fail the run it reports.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from airflow.providers.smtp.notifications.smtp import SmtpNotifier

from patentml_airflow.config import env

log = logging.getLogger(__name__)

SMTP_CONN_ID = "patentml_smtp"
FAILED_SUBJECT = "PatentML: {{ dag.dag_id }} run {{ run_id }} failed"
FAILED_BODY = ("<p>The DAG run <b>{{ run_id }}</b> of <b>{{ dag.dag_id }}</b> failed"
               "{% if reason %}: {{ reason }}{% endif %}.</p><p>See its task logs in the Airflow UI.</p>")
LATE_SUBJECT = "PatentML: {{ dag_run.dag_id }} run {{ dag_run.run_id }} missed its deadline"
LATE_BODY = ("<p>The DAG run <b>{{ dag_run.run_id }}</b> of <b>{{ dag_run.dag_id }}</b> had not finished "
             "by {{ deadline.deadline_time }}.</p>")


def split_emails(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [part.strip() for part in str(value or "").replace(";", ",").split(",") if part.strip()]


class PatentMLAlert(SmtpNotifier):
    """An :class:`SmtpNotifier` whose recipients and sender are resolved when it is sent."""

    def __init__(self, subject: str = FAILED_SUBJECT, html_content: str = FAILED_BODY, **kwargs: Any) -> None:
        kwargs.setdefault("smtp_conn_id", env("ALERT_SMTP_CONN", SMTP_CONN_ID))
        kwargs.setdefault("to", split_emails(env("ALERT_EMAILS", "")))
        kwargs.setdefault("from_email", env("ALERT_FROM", "") or None)
        super().__init__(subject=subject, html_content=html_content, **kwargs)

    def get_template_env(self, dag: Any = None) -> Any:
        # dag.test() hands DAG callbacks a serialized DAG that has no template environment (Airflow 3.3).
        return super().get_template_env(dag=dag if hasattr(dag, "get_template_env") else None)

    def _ready(self) -> bool:
        """Fill recipients (and sender) from the Connection; False (logged) when there is nobody to tell."""
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            extra = BaseHook.get_connection(self.smtp_conn_id).extra_dejson or {}
        except AirflowNotFoundException:
            log.warning("PatentML alert not sent: no Connection %r (set it, or PATENTML_ALERT_EMAILS and "
                        "the Connection for the SMTP server)", self.smtp_conn_id)
            return False
        self.to = split_emails(self.to) or split_emails(extra.get("to"))
        self.from_email = self.from_email or extra.get("from_email") or "patentml@localhost"
        if not self.to:
            log.warning("PatentML alert not sent: no recipients (PATENTML_ALERT_EMAILS, or the 'to' extra of "
                        "Connection %r)", self.smtp_conn_id)
        return bool(self.to)

    def notify(self, context: Any) -> None:
        if self._ready():
            super().notify(context)

    async def async_notify(self, context: Any) -> None:
        from asgiref.sync import sync_to_async

        if await sync_to_async(self._ready)():
            await super().async_notify(context)


def retrain_deadline(hours: int) -> Any:
    """A deadline alert: an e-mail when a retrain run has not finished ``hours`` after it was queued (0: none)."""
    if hours <= 0:
        return None
    from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference

    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=dt.timedelta(hours=hours),
        callback=AsyncCallback(PatentMLAlert, kwargs={"subject": LATE_SUBJECT, "html_content": LATE_BODY}),
        name="patentml_retrain_deadline",
    )
