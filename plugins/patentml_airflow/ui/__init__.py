"""The PatentML page inside the Airflow UI: leaderboard of a snapshot, champion, charts, a box that asks the
champion about a pasted abstract, promotions and ingest.

A FastAPI sub-app mounted by the plugin at ``/patentml`` on the api-server. Every route but the icon asks
Airflow's auth manager (:mod:`.access`); the form post must also come from the page itself. Data comes
from the PatentML Postgres (``patentml_db`` Connection, else ``PATENTML_*``) in one bound statement
(:mod:`patentml.db.dashboard`), the champion from the model store (``patentml_s3``); pages are rendered
by Jinja2 with autoescaping, and an error page names no database host, user or SQL (the api-server log
has the details under the reference it shows).

Imported only by the api-server (the plugin builds the app lazily), so the web imports cost tasks nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from patentml_airflow.ui.access import Denied, check_same_origin, reference, requires, user_name
from patentml_airflow.ui.suggest import MAX_CHARS, TOP_K, ChampionCache, NoChampion, suggest
from patentml_airflow.ui.view import chart_set, collect

log = logging.getLogger(__name__)

URL_PREFIX = "/patentml"
MAX_ROWS = 200
#: Bytes of a form post read at most (the abstract plus its encoding).
MAX_BODY = 4 * MAX_CHARS + 1024
TEMPLATES = Path(__file__).parent / "templates"
ICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="currentColor" '
    'stroke-width="2" stroke-linecap="round" stroke-linejoin="round"><path d="M4 19V5"/><path d="M4 19h16"/>'
    '<rect x="7" y="11" width="3" height="6"/><rect x="12" y="7" width="3" height="10"/>'
    '<rect x="17" y="13" width="3" height="4"/></svg>'
)


# -- formatting filters ------------------------------------------------------------------------------
def _score(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{float(value):.3f}"


def _duration(seconds: Any) -> str:
    if seconds is None:
        return "–"
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _when(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "–" if value is None else str(value)


def _count(value: Any) -> str:
    return "–" if value is None else f"{int(value):,}"


def _environment() -> Any:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    environment = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(default=True))
    environment.filters.update(score=_score, duration=_duration, when=_when, count=_count)
    return environment


_ENV: Any = None


def _template(name: str) -> Any:
    global _ENV
    if _ENV is None:
        _ENV = _environment()
    return _ENV.get_template(name)


def render(data: dict[str, Any], user: str, **extra: Any) -> str:
    """The dashboard page for ``collect``'s data (charts drawn here, server-side)."""
    now = _when(dt.datetime.now(dt.timezone.utc))
    return _template("page.html").render(**data, charts=chart_set(data), user=user, now=now, max_chars=MAX_CHARS,
                                         **extra)


def render_error(problem: str, ref: str, status: int = 503) -> str:
    return _template("error.html").render(problem=problem, reference=ref, status=status)


def database_problem(exc: BaseException) -> str:
    """What the page may say about a failed read: the kind of problem, never the host, user, URL or SQL."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    from patentml.exceptions import DatabaseError

    pgcode = getattr(getattr(exc, "orig", None), "pgcode", None)
    if pgcode in ("42P01", "42703"):  # undefined table / column
        return "its tables are missing or older than this PatentML: run `patentml db upgrade`"
    if isinstance(exc, (DatabaseError, OperationalError, InterfaceError)):
        return "the database server cannot be reached or refused the login"
    return f"reading it failed ({exc.__class__.__name__})"


# -- the app -----------------------------------------------------------------------------------------
class _Engines:
    """One engine per database URL for this process: the connection probe is paid once, not per page."""

    def __init__(self) -> None:
        self._engines: dict[str, Any] = {}

    def get(self, settings: Any) -> Any:
        from patentml.db.engine import get_engine

        key = settings.database_url or f"embedded:{settings.pg_dir}"
        if key not in self._engines:
            self._engines[key] = get_engine(settings)
        return self._engines[key]


def _settings() -> Any:
    from patentml_airflow.hook import PatentMLHook

    return PatentMLHook().get_settings()


def create_app() -> FastAPI:
    """The sub-app; built by the plugin only when the api-server asks for it (keeps task start-up light)."""
    app = FastAPI(title="PatentML", description="Leaderboard, champion, charts and suggestions of PatentML "
                  "(needs an Airflow login and the PatentML view permission).",
                  docs_url=None, redoc_url=None, openapi_url=None)
    engines, champion = _Engines(), ChampionCache()

    @app.exception_handler(Denied)
    def denied(request: Request, exc: Denied) -> Response:
        if request.url.path.rstrip("/").endswith("/api/summary"):
            return JSONResponse({"detail": exc.message}, status_code=exc.status)
        return HTMLResponse(render_error(exc.message, "", exc.status), status_code=exc.status)

    def load(limit: int, snapshot: int | None) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
        try:
            return collect(engines.get(_settings()), limit=limit, snapshot_id=snapshot), None
        except Exception as exc:  # noqa: BLE001 - logged in full, shown as its kind only
            ref = reference()
            log.exception("PatentML page [%s]: reading the database failed", ref)
            return None, (database_problem(exc), ref)

    # Plain (sync) handlers run in a thread pool, so blocking reads never stall the api-server's loop.
    @app.get("/", response_class=HTMLResponse)
    def page(user: Any = Depends(requires("GET")), limit: int = Query(20, ge=1, le=MAX_ROWS),
             snapshot: int | None = Query(None, ge=1)) -> HTMLResponse:
        data, error = load(limit, snapshot)
        if error is not None:
            return HTMLResponse(render_error(*error), status_code=503)
        return HTMLResponse(render(data or {}, user_name(user), limit=limit))

    @app.get("/icon.svg", include_in_schema=False)
    def icon() -> Response:
        # Static and harmless: the nav bar fetches it before any page, so it needs no login.
        return Response(ICON_SVG, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    @app.get("/api/summary")
    def summary(user: Any = Depends(requires("GET")), limit: int = Query(20, ge=1, le=MAX_ROWS),
                snapshot: int | None = Query(None, ge=1)) -> JSONResponse:
        data, error = load(limit, snapshot)
        if error is not None:
            return JSONResponse({"error": f"The PatentML database cannot be read: {error[0]}",
                                 "reference": error[1]}, status_code=503)
        return JSONResponse(_jsonable(data))

    @app.get("/suggest", include_in_schema=False)
    def suggest_form(user: Any = Depends(requires("GET"))) -> Response:
        return RedirectResponse("./#suggest", status_code=303)  # a reload of the answer page

    @app.post("/suggest", response_class=HTMLResponse)
    async def suggest_post(request: Request, user: Any = Depends(requires("POST"))) -> HTMLResponse:
        check_same_origin(request)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return _answer(user, "", None, f"The abstract is longer than {MAX_CHARS:,} characters.", 413)
        text = (parse_qs(body.decode("utf-8", "replace")).get("abstract") or [""])[0]
        if not text.strip():
            return _answer(user, text, None, "Paste an abstract first.", 422)
        if len(text) > MAX_CHARS:
            return _answer(user, text, None, f"The abstract is longer than {MAX_CHARS:,} characters.", 413)
        return await run_in_threadpool(_suggest, user, text)

    def _suggest(user: Any, text: str) -> HTMLResponse:
        try:
            answer = suggest(champion.get(_settings()), text, TOP_K)
        except NoChampion:
            return _answer(user, text, None, "There is no champion yet: run the patent_retrain DAG first.", 409)
        except Exception as exc:  # noqa: BLE001 - logged in full, shown as its kind only
            ref = reference()
            log.exception("PatentML page [%s]: suggesting failed", ref)
            return _answer(user, text, None, f"The champion could not be used ({exc.__class__.__name__}; "
                                             f"reference {ref} in the api-server log).", 503)
        return _answer(user, text, answer, answer["error"], 200 if not answer["error"] else 422)

    def _answer(user: Any, text: str, answer: dict[str, Any] | None, problem: str | None,
                status: int) -> HTMLResponse:
        html = _template("suggest.html").render(user=user_name(user), text=text, answer=answer, problem=problem,
                                                max_chars=MAX_CHARS, loaded=champion.loaded())
        return HTMLResponse(html, status_code=status)

    return app


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "__float__") and not isinstance(value, (int, float, bool)):
        return float(value)  # Decimal from EXTRACT(EPOCH ...)
    return value


__all__ = ["URL_PREFIX", "collect", "create_app", "database_problem", "render", "render_error"]
