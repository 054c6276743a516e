"""The PatentML Airflow plugin: a page (FastAPI sub-app at /patentml) shown inside the Airflow UI.

The sub-app is built only when the api-server asks for it: Airflow imports plugin files in every
component (task processes included), and those should not pay for the web imports.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/patentml"


class PatentMLPlugin(AirflowPlugin):
    """Leaderboard, champion, promotion history, per-section scores and ingest batches."""

    name = "patentml"
    external_views = [
        {
            "name": "PatentML",
            "href": URL_PREFIX + "/",
            "destination": "nav",
            "url_route": "patentml",
            "nav_top_level": True,
            "icon": URL_PREFIX + "/icon.svg",
        }
    ]

    @cached_property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        from patentml_airflow.ui import create_app

        return [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "PatentML"}]
