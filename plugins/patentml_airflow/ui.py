"""The PatentML page inside the Airflow UI: leaderboard, champion and its history, per-section scores, ingest.

A FastAPI sub-app mounted by the plugin at ``/patentml`` on the api-server. Every route needs a
logged-in Airflow user (``GetUserDep``: a bearer token or the UI's ``_token`` cookie), because a
mounted sub-app is not protected by Airflow on its own. Data comes from the PatentML Postgres
(``patentml_db`` Connection, else ``PATENTML_*``), read with bound parameters only, and the page
is rendered by Jinja2 with autoescaping: no value from the database reaches the HTML unescaped.

Imported only by the api-server (the plugin builds the app lazily), so the web imports cost tasks nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from typing import Any

from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import FastAPI, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response

log = logging.getLogger(__name__)

URL_PREFIX = "/patentml"
MAX_ROWS = 200


def collect(engine: Any, limit: int = 20) -> dict[str, Any]:
    """Everything the page shows, as plain data (also served as JSON); every run shows its own score."""
    from patentml import variants
    from patentml.db import corpus, registry, results

    with engine.connect() as conn:
        counts = corpus.counts(conn)
        promotions = registry.promotions(conn, limit)
        champion: dict[str, Any] | None = None
        sections: list[dict[str, Any]] = []
        if promotions and promotions[0]["champion_after"]:
            current = promotions[0]["champion_after"]
            row = registry.model(conn, current)
            champion = {"model_id": current} if row is None else {
                k: getattr(row, k) for k in ("model_id", "run_id", "variant", "snapshot_id", "store_uri",
                                             "manifest_sha256", "created_at")}
            if champion.get("run_id") is not None:
                scored = results.run_scores(conn, [champion["run_id"]])
                champion["metrics"] = scored[0] if scored else None
                sections = results.section_scores(conn, champion["run_id"]) if scored else []
        return {
            "corpus": {"patents": counts["patents"], "batches": counts["ingest batches"],
                       "rejected": counts["rejected records"], "runs": counts["training runs"]},
            "leaderboard": results.recent_runs(conn, limit),
            "champion": champion,
            "promotions": promotions,
            "sections": sections,
            "batches": corpus.recent_batches(conn, limit),
            "variants": variants.describe(),
        }


# -- rendering -----------------------------------------------------------------------------------
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


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>PatentML</title>
<style>
 body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:16px 20px;color:#1b1f24;background:#fff}
 h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:22px 0 6px}
 .muted{color:#5c6670} table{border-collapse:collapse;width:100%;margin:4px 0 8px}
 th,td{padding:4px 8px;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:top}
 th{background:#f4f6f8;font-weight:600} td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
 .ok{color:#137333;font-weight:600} .bad{color:#b3261e;font-weight:600} .run{color:#8a5a00}
 .card{border:1px solid #e3e6ea;border-radius:6px;padding:10px 14px;margin:6px 0;background:#fafbfc}
 code{font-size:12px;word-break:break-all}
 @media (prefers-color-scheme: dark){body{background:#15181c;color:#e4e7eb}th{background:#20252b}
  th,td{border-color:#2c333b}.card{background:#1b1f24;border-color:#2c333b}.muted{color:#9aa4ae}}
</style></head><body>
<h1>PatentML</h1>
<div class="muted">{{ corpus.patents|count }} patents · {{ corpus.batches|count }} ingest batches ·
 {{ corpus.rejected|count }} rejected records · {{ corpus.runs|count }} training runs · signed in as {{ user }}</div>

<h2>Champion</h2>
{% if champion %}
<div class="card" id="champion">
 <b>{{ champion.model_id }}</b>{% if champion.variant %} · {{ champion.variant }}{% endif %}
 {% if champion.run_id is not none %} · run {{ champion.run_id }}{% endif %}
 {% if champion.snapshot_id is not none %} · snapshot {{ champion.snapshot_id }}{% endif %}<br>
 {% if champion.metrics %}test ({{ champion.metrics.rule }}): F1 {{ champion.metrics.f1|score }} ·
 P@1 {{ champion.metrics.p_at_1|score }} · R@5 {{ champion.metrics.r_at_5|score }} ·
 {{ champion.metrics.n_patents|count }} patents<br>{% endif %}
 {% if champion.store_uri %}<span class="muted">artifact</span> <code>{{ champion.store_uri }}</code>{% endif %}
 {% if champion.created_at %}<span class="muted"> · promoted model created {{ champion.created_at|when }}</span>{% endif %}
</div>
{% else %}<p class="muted">No champion yet: run the <code>patent_retrain</code> DAG.</p>{% endif %}

<h2>Per-section scores of the champion (test split)</h2>
{% if sections %}
<table id="sections"><tr><th>Section</th><th class="n">Precision</th><th class="n">Recall</th><th class="n">F1</th><th class="n">Patents</th></tr>
{% for s in sections %}<tr><td>{{ s.section }}</td><td class="n">{{ s.precision|score }}</td><td class="n">{{ s.recall|score }}</td>
<td class="n">{{ s.f1|score }}</td><td class="n">{{ s.n_patents|count }}</td></tr>{% endfor %}
</table>
{% else %}<p class="muted">No section scores for a champion yet.</p>{% endif %}

<h2>Leaderboard: recent runs</h2>
{% if leaderboard %}
<table id="leaderboard"><tr><th class="n">Run</th><th>Variant</th><th>Status</th><th>Started</th><th class="n">Duration</th>
<th>Rule</th><th class="n">Test F1</th><th class="n">P@1</th><th class="n">R@5</th><th class="n">Precision</th><th class="n">Recall</th></tr>
{% for r in leaderboard %}<tr>
<td class="n">{{ r.run_id }}</td><td>{{ r.variant }}</td>
<td class="{{ 'ok' if r.status == 'succeeded' else ('run' if r.status == 'running' else 'bad') }}"{% if r.error %} title="{{ r.error }}"{% endif %}>{{ r.status }}</td>
<td>{{ r.started_at|when }}</td><td class="n">{{ r.seconds|duration }}</td><td>{{ r.rule or '–' }}</td>
<td class="n">{{ r.f1|score }}</td><td class="n">{{ r.p_at_1|score }}</td><td class="n">{{ r.r_at_5|score }}</td>
<td class="n">{{ r.precision|score }}</td><td class="n">{{ r.recall|score }}</td></tr>{% endfor %}
</table>
{% else %}<p class="muted">No training runs yet.</p>{% endif %}

<h2>Promotion history</h2>
{% if promotions %}
<table id="promotions"><tr><th>Decided</th><th>Action</th><th>Challenger</th><th>Metric</th><th class="n">Challenger score</th><th class="n">Champion score</th>
<th class="n">Margin</th><th>Champion after</th><th>Reason</th></tr>
{% for p in promotions %}<tr><td>{{ p.decided_at|when }}</td>
<td class="{{ 'ok' if p.promoted else 'muted' }}">{{ p.action }}</td>
<td>{{ p.challenger_model_id or '–' }}{% if p.challenger_run_id is not none %} (run {{ p.challenger_run_id }}){% endif %}</td>
<td>{{ p.metric }}</td><td class="n">{{ p.challenger_score|score }}</td><td class="n">{{ p.champion_score|score }}</td><td class="n">{{ p.margin|score }}</td>
<td>{{ p.champion_after or '–' }}</td><td>{{ p.reason }}</td></tr>{% endfor %}
</table>
{% else %}<p class="muted">No promotion decisions yet.</p>{% endif %}

<h2>Last ingest batches</h2>
{% if batches %}
<table id="batches"><tr><th class="n">Batch</th><th>Source</th><th>Format</th><th>Status</th><th>Started</th>
<th class="n">Read</th><th class="n">Stored</th><th class="n">Updated</th><th class="n">Unchanged</th><th class="n">Rejected</th><th class="n">Skipped</th><th>Top rejection reason</th></tr>
{% for b in batches %}<tr><td class="n">{{ b.batch_id }}</td><td><code>{{ b.source }}</code></td><td>{{ b.format }}</td>
<td class="{{ 'ok' if b.status == 'succeeded' else ('run' if b.status == 'running' else 'bad') }}">{{ b.status }}</td>
<td>{{ b.started_at|when }}</td><td class="n">{{ b.n_read|count }}</td><td class="n">{{ b.n_stored|count }}</td>
<td class="n">{{ b.n_updated|count }}</td><td class="n">{{ b.n_unchanged|count }}</td>
<td class="n">{{ b.n_rejected|count }}</td><td class="n">{{ b.n_skipped|count }}</td><td>{{ b.top_reason or '–' }}</td></tr>{% endfor %}
</table>
{% else %}<p class="muted">Nothing ingested yet: run the <code>patent_ingest</code> DAG.</p>{% endif %}
<h2>Variants the registry can train</h2>
<table id="variants"><tr><th>Encoder</th><th>Variants</th><th>Runs in torch</th><th>Fine-tunes an encoder</th><th>Caches</th><th>Built from runs</th></tr>
{% for v in variants %}<tr><td>{{ v.encoder }}</td><td>{{ v.variants|join(", ") }}</td><td>{{ "yes" if v.needs_torch else "no" }}</td>
<td>{{ "yes" if v.can_fine_tune else "no" }}</td><td>{{ v.caches|join(", ") or "–" }}</td><td>{{ "yes" if v.built_from_runs else "no" }}</td></tr>{% endfor %}
</table>
<p class="muted">Data as of {{ now }} · JSON: <a href="api/summary">api/summary</a></p>
</body></html>
"""

ICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="currentColor" '
    'stroke-width="2" stroke-linecap="round" stroke-linejoin="round"><path d="M4 19V5"/><path d="M4 19h16"/>'
    '<rect x="7" y="11" width="3" height="6"/><rect x="12" y="7" width="3" height="10"/>'
    '<rect x="17" y="13" width="3" height="4"/></svg>'
)

ERROR_TEMPLATE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>PatentML</title></head>
<body style="font:14px system-ui,sans-serif;margin:16px 20px"><h1 style="font-size:20px">PatentML</h1>
<p>The PatentML database cannot be read: {{ error }}</p>
<p>Check the <code>patentml_db</code> Connection (or <code>PATENTML_DATABASE_URL</code>) and that the schema
exists (<code>patentml db upgrade</code>).</p></body></html>
"""


def _environment() -> Any:
    from jinja2 import Environment

    environment = Environment(autoescape=True)
    environment.filters.update(score=_score, duration=_duration, when=_when, count=_count)
    return environment


def render(data: dict[str, Any], user: str) -> str:
    now = _when(dt.datetime.now(dt.timezone.utc))
    return _environment().from_string(TEMPLATE).render(**data, user=user, now=now)


def render_error(error: str) -> str:
    return _environment().from_string(ERROR_TEMPLATE).render(error=error)


def _engine() -> Any:
    """The PatentML engine from the ``patentml_db`` Connection (else the environment), without migrating."""
    from patentml_airflow.hook import PatentMLHook

    return PatentMLHook().get_engine(migrate=False)


def _user_name(user: Any) -> str:
    for attr in ("get_name", "get_id"):
        getter = getattr(user, attr, None)
        if callable(getter):
            try:
                return str(getter())
            except Exception:  # noqa: BLE001 - a display name is not worth a 500
                continue
    return str(user)


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


def create_app() -> FastAPI:
    """The sub-app; built by the plugin only when the api-server asks for it (keeps task start-up light)."""
    app = FastAPI(
        title="PatentML",
        description="Leaderboard, champion and ingest status of PatentML (needs an Airflow login).",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    def _load(limit: int) -> tuple[dict[str, Any] | None, str | None]:
        try:
            return collect(_engine(), limit=limit), None
        except Exception as exc:  # noqa: BLE001 - shown to the signed-in user, escaped
            log.exception("PatentML page: reading the database failed")
            first = (str(exc).strip().splitlines() or [""])[0]
            return None, f"{exc.__class__.__name__}: {first}"

    # Plain (sync) handlers: FastAPI runs them in a thread pool, so the blocking database reads
    # never stall the api-server's event loop.
    @app.get("/", response_class=HTMLResponse)
    def page(user: GetUserDep, limit: int = Query(20, ge=1, le=MAX_ROWS)) -> HTMLResponse:
        data, error = _load(limit)
        if error is not None:
            return HTMLResponse(render_error(error), status_code=503)
        return HTMLResponse(render(data or {}, _user_name(user)))

    @app.get("/icon.svg", include_in_schema=False)
    def icon() -> Response:
        # Static and harmless: the nav bar fetches it before any page, so it needs no login.
        return Response(ICON_SVG, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    @app.get("/api/summary")
    def summary(user: GetUserDep, limit: int = Query(20, ge=1, le=MAX_ROWS)) -> JSONResponse:
        data, error = _load(limit)
        if error is not None:
            return JSONResponse({"error": error}, status_code=503)
        return JSONResponse(_jsonable(data))

    return app
