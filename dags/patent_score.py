"""
### patent_score: the champion's suggestions for new patents, into Postgres

Runs when either Asset is updated: the **`patentml_patents` Asset** (`patent_ingest` stored new or
changed patents) or the **`patentml_champion` Asset** (a promotion moved the champion pointer).
One task, `score`, runs `patentml score`: the champion named by the model store's pointer writes
its top-k labels, with the ones its decision rule selects marked, into **`patent_suggestions`**
for every patent that has none from it yet. So new filings get suggestions, and a new champion
scores the whole corpus once. Batches commit one at a time: a failed or retried run goes on from
where it stopped and never scores a patent twice. `docs/sql.md` has the queries analysts run on it.

Params (manual triggers): `top_k`, `rescore` (all patents again, replacing the champion's rows),
`since` (only patents first stored on or after a date), `reuse_vectors` (MiniLM vectors from the
Postgres cache: faster, float16).

Database and store come from the Connections `patentml_db` / `patentml_s3`, else `PATENTML_*`.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Asset, Param, dag, task

from patentml_airflow.config import (
    CHAMPION_ASSET_NAME,
    CHAMPION_ASSET_URI,
    PATENTS_ASSET_NAME,
    PATENTS_ASSET_URI,
    DagConfig,
)

CONFIG = DagConfig.from_env()
PATENTS = Asset(name=PATENTS_ASSET_NAME, uri=PATENTS_ASSET_URI)
CHAMPION = Asset(name=CHAMPION_ASSET_NAME, uri=CHAMPION_ASSET_URI)


@dag(
    dag_id="patent_score",
    schedule=(PATENTS | CHAMPION),
    start_date=DagConfig.START_DATE,
    catchup=False,
    # Runs queue rather than overlap: two scorers of one model would wait on its lock anyway.
    max_active_runs=1,
    tags=["patentml", "score"],
    doc_md=__doc__,
    default_args=CONFIG.default_args(),
    params={
        "top_k": Param(5, type="integer", minimum=1, maximum=100, title="Suggestions per patent",
                       description="Top-ranked labels stored per patent (selected labels beyond them are stored too)."),
        "rescore": Param(False, type="boolean", title="Rescore every patent",
                         description="Replace the champion's earlier suggestions instead of scoring only new patents."),
        "since": Param(None, type=["null", "string"], format="date", title="Only patents stored since",
                       description="YYYY-MM-DD: only patents first stored on or after this day; empty means all."),
        "reuse_vectors": Param(False, type="boolean", title="Reuse cached sentence vectors",
                               description="MiniLM models: take vectors from the Postgres cache (much faster, "
                                           "float16) instead of encoding every abstract."),
    },
)
def patent_score() -> None:
    @task
    def score(params: dict, triggering_asset_events=None) -> dict:
        """Score every patent the champion has no suggestions for; returns the run's summary."""
        from patentml_airflow.hook import PatentMLHook

        from patentml.suggest import score_champion

        for asset, events in (triggering_asset_events or {}).items():
            for event in events:
                print(f"triggered by {getattr(asset, 'name', asset)}: {event.extra}")
        hook = PatentMLHook()
        since = dt.date.fromisoformat(params["since"]) if params.get("since") else None
        summary = score_champion(hook.get_settings(), hook.get_engine(), rescore=bool(params.get("rescore")),
                                 since=since, top_k=int(params.get("top_k") or 5),
                                 reuse_vectors=bool(params.get("reuse_vectors")), progress=False)
        print(summary.line())
        return summary.as_dict()

    score()


patent_score()
