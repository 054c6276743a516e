"""
### patent_ingest: new patent abstracts into the PatentML Postgres

Reads the configured source (Param `source`, default `PATENTML_INGEST_SOURCE`): a folder, a glob,
a file or an `http(s)://` URL (a URL ending in `/` is read as a directory listing, such as
USPTO's bulk-data pages). Weekly USPTO files named `ipgYYMMDD`/`ipaYYMMDD` are chosen by the run's
**data interval** (a file belongs to the run whose interval holds its publication date); other
sources are read whole on every run, which the upsert on patent id turns into a no-op.

Tasks: `select_sources` (what this interval reads) -> `ingest` (one batch per file; bad records go
to `rejected_records`) -> `publish_patents` (updates the **`patentml_patents` Asset** with the
counts in the event's extra, and only when new or changed patents arrived; otherwise it is
skipped, so the Asset-scheduled `patent_retrain` does not start for nothing).

Database and store come from the Connections `patentml_db` / `patentml_s3`, else `PATENTML_*`.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Asset, CronDataIntervalTimetable, Param, dag, task

from patentml_airflow.config import PATENTS_ASSET_NAME, PATENTS_ASSET_URI, DagConfig

CONFIG = DagConfig.from_env()
PATENTS = Asset(name=PATENTS_ASSET_NAME, uri=PATENTS_ASSET_URI)


@dag(
    dag_id="patent_ingest",
    # A data-interval timetable: a weekly run covers [previous run, this run), which is what picks
    # the weekly files by date. A manual run covers the last complete interval.
    schedule=CronDataIntervalTimetable(CONFIG.ingest_cron, timezone=CONFIG.timezone) if CONFIG.ingest_cron else None,
    start_date=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["patentml", "ingest"],
    doc_md=__doc__,
    default_args={
        "owner": "patentml",
        "retries": CONFIG.task_retries,
        "retry_delay": dt.timedelta(minutes=5),
        "retry_exponential_backoff": True,
    },
    params={
        "source": Param(
            CONFIG.ingest_source,
            type="string",
            title="Source",
            description="Folder, glob, file or http(s) URL; several separated by commas. "
            "Empty means PATENTML_INGEST_SOURCE.",
        ),
        "format": Param(
            None,
            type=["null", "string"],
            enum=[None, "jsonl", "uspto2m", "uspto-xml", "patentsview"],
            title="Format",
            description="Force a format; empty means detect it from each file's name and content.",
        ),
        "by_interval": Param(
            True,
            type="boolean",
            title="Pick dated files by data interval",
            description="Off: read every ipgYYMMDD/ipaYYMMDD file of the source, whatever its date.",
        ),
    },
)
def patent_ingest() -> None:
    @task
    def select_sources(params: dict, data_interval_start=None, data_interval_end=None) -> dict:
        """Decide which files this run reads; logs what is left out and why."""
        from patentml_airflow.config import env
        from patentml_airflow.sources import select, split_sources

        sources = split_sources(params.get("source") or env("INGEST_SOURCE", ""))
        selection = select(sources, data_interval_start, data_interval_end, bool(params.get("by_interval", True)))
        print(
            f"interval [{data_interval_start}, {data_interval_end}): {len(selection.selected)} source(s) selected, "
            f"{len(selection.outside)} dated file(s) outside the interval"
        )
        for name in selection.selected:
            print(f"  read: {name}")
        return selection.as_dict()

    @task
    def ingest(selection: dict, params: dict) -> dict:
        """Download URLs, then ingest each file as one batch; returns the summed counts per batch."""
        from patentml_airflow.hook import PatentMLHook
        from patentml_airflow.sources import localize

        selected = selection["selected"]
        totals = {key: 0 for key in ("read", "stored", "updated", "unchanged", "rejected", "skipped")}
        if not selected:
            print("No source file falls in this data interval: nothing to ingest.")
            return {**totals, "batches": []}
        hook = PatentMLHook()
        engine = hook.get_engine()
        from patentml.ingest import ingest as ingest_sources

        files = localize(selected, hook.get_settings().cache_dir / "downloads")
        summaries = ingest_sources(engine, files, fmt=params.get("format") or None, progress=False)
        batches = []
        for summary in summaries:
            row = summary.as_dict()
            print(summary.line() if hasattr(summary, "line") else row)
            batches.append({k: row.get(k) for k in ("batch_id", "source", *totals)})
            for key in totals:
                totals[key] += int(row.get(key) or 0)
        return {**totals, "batches": batches}

    @task(outlets=[PATENTS])
    def publish_patents(counts: dict, outlet_events=None) -> dict:
        """Tell Airflow the patents table changed (new or updated rows), with the counts; skip otherwise."""
        from airflow.sdk.exceptions import AirflowSkipException

        changed = int(counts.get("stored", 0)) + int(counts.get("updated", 0))
        if changed == 0:
            raise AirflowSkipException(
                f"no new or updated patents (read {counts.get('read', 0)}, unchanged {counts.get('unchanged', 0)}, "
                f"rejected {counts.get('rejected', 0)}): the patents Asset is not updated"
            )
        extra = {
            key: int(counts.get(key, 0)) for key in ("read", "stored", "updated", "unchanged", "rejected", "skipped")
        }
        extra["batch_ids"] = [b["batch_id"] for b in counts.get("batches", [])]
        outlet_events[PATENTS].extra = extra
        print(f"patents Asset updated: {extra}")
        return extra

    publish_patents(ingest(select_sources()))


patent_ingest()
