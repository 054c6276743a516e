"""
### patent_ingest: new patent abstracts into the PatentML Postgres

Reads the configured source (Param `source`, default `PATENTML_INGEST_SOURCE`): a folder, a glob,
a file or an `http(s)://` URL (a URL ending in `/` is read as a directory listing, such as
USPTO's bulk-data pages). Local paths must lie under `PATENTML_INGEST_ROOTS` (default
`$PATENTML_HOME/incoming`; symlinks and `..` are resolved first) and URLs on
`PATENTML_INGEST_URL_HOSTS` (default `bulkdata.uspto.gov`, PatentsView's bucket); anything else
fails at once, naming what is allowed.

**Which weekly files.** USPTO files named `ipgYYMMDD`/`ipaYYMMDD` are chosen by the run's **data
interval** (a file belongs to the run whose interval holds its publication date). A manual run
*without* a logical date reads the last complete interval before it was triggered (what a manual
run with a logical date gets from Airflow; with `PATENTML_INGEST_SCHEDULE=none` there is no
interval and it reads every dated file). `latest=N` reads the N newest dated files of each source
instead, `by_interval=false` all of them. Other sources are read whole on every run, which the
upsert on patent id turns into a no-op.

Tasks: `select_sources` (what this run reads) -> `ingest` (**one mapped task per file**, so files
download and ingest in parallel and a failed file retries alone; PatentsView's tables of one folder
are one task; downloads resume and are cached under `$PATENTML_HOME/cache/downloads`; bad records
go to `rejected_records`) -> `publish_patents` (updates the **`patentml_patents` Asset** with the
counts in the event's extra, only when every file made it and new or changed patents arrived;
otherwise it is skipped or held back, so the Asset-scheduled `patent_retrain` does not start for
nothing).

Database and store come from the Connections `patentml_db` / `patentml_s3`, else `PATENTML_*`.
"""

from __future__ import annotations

from airflow.sdk import Asset, CronDataIntervalTimetable, Param, dag, task

from patentml_airflow.config import PATENTS_ASSET_NAME, PATENTS_ASSET_URI, DagConfig

CONFIG = DagConfig.from_env()
PATENTS = Asset(name=PATENTS_ASSET_NAME, uri=PATENTS_ASSET_URI)
COUNTS = ("read", "stored", "updated", "unchanged", "rejected", "skipped")


@dag(
    dag_id="patent_ingest",
    # A data-interval timetable: a weekly run covers [previous run, this run), which is what picks
    # the weekly files by date.
    schedule=CronDataIntervalTimetable(CONFIG.ingest_cron, timezone=CONFIG.timezone) if CONFIG.ingest_cron else None,
    start_date=DagConfig.START_DATE,
    catchup=False,
    max_active_runs=1,
    tags=["patentml", "ingest"],
    doc_md=__doc__,
    default_args=CONFIG.default_args(),
    params={
        "source": Param(
            CONFIG.ingest_source,
            type="string",
            title="Source",
            description="Folder, glob, file or http(s) URL; several separated by commas. Empty means "
            "PATENTML_INGEST_SOURCE. Only under PATENTML_INGEST_ROOTS and from PATENTML_INGEST_URL_HOSTS.",
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
        "latest": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            title="Latest dated files",
            description="Read the N newest ipgYYMMDD/ipaYYMMDD files of each source, whatever the interval.",
        ),
    },
)
def patent_ingest() -> None:
    @task
    def select_sources(params: dict, data_interval_start=None, data_interval_end=None, dag_run=None) -> list[dict]:
        """Decide which files this run reads, one work item per file; logs what is left out and why."""
        from patentml_airflow.config import env
        from patentml_airflow.hook import PatentMLHook
        from patentml_airflow.sources import SourcePolicy, last_interval, select, split_sources, work_items

        policy = SourcePolicy.from_env(PatentMLHook().get_settings().home)
        start, end = data_interval_start, data_interval_end
        by_interval, latest = bool(params.get("by_interval", True)), params.get("latest")
        if start is None and by_interval and not latest and CONFIG.ingest_cron:
            start, end = last_interval(CONFIG.ingest_cron, CONFIG.timezone, dag_run.run_after)
            print(f"no logical date: reading the last complete interval before {dag_run.run_after}")
        sources = split_sources(params.get("source") or env("INGEST_SOURCE", ""))
        selection = select(sources, start, end, policy, by_interval, latest)
        what = f"the {latest} newest dated files" if latest else f"interval [{start}, {end})" if by_interval else "all dates"
        print(f"{what}: {len(selection.selected)} file(s) selected, {len(selection.outside)} dated file(s) left out")
        for name in selection.selected:
            print(f"  read: {name}")
        items = work_items(selection.selected)
        if not items:
            print("No source file falls in this selection: nothing to ingest.")
        return items

    @task(map_index_template="{{ ingest_item }}")
    def ingest(item: dict, params: dict) -> dict:
        """Download (resuming) and ingest one file as one batch; returns its counts."""
        from airflow.sdk import get_current_context

        from patentml_airflow.hook import PatentMLHook
        from patentml_airflow.sources import SourcePolicy, localize

        get_current_context()["ingest_item"] = item["name"]
        hook = PatentMLHook()
        settings = hook.get_settings()
        files = localize(item["sources"], settings.cache_dir / "downloads", SourcePolicy.from_env(settings.home))
        from patentml.ingest import ingest as ingest_sources

        summaries = ingest_sources(hook.get_engine(), files, fmt=params.get("format") or None, progress=False)
        counts = {key: 0 for key in COUNTS}
        batches = []
        for summary in summaries:
            row = summary.as_dict()
            print(summary.line())
            batches.append({k: row.get(k) for k in ("batch_id", "source", *COUNTS)})
            for key in COUNTS:
                counts[key] += int(row.get(key) or 0)
        return {**counts, "batches": batches}

    @task(outlets=[PATENTS])
    def publish_patents(results: list, outlet_events=None) -> dict:
        """Tell Airflow the patents table changed (new or updated rows), with the summed counts; skip otherwise."""
        from airflow.sdk.exceptions import AirflowSkipException

        counts = {key: sum(int(r.get(key, 0)) for r in results) for key in COUNTS}
        if counts["stored"] + counts["updated"] == 0:
            raise AirflowSkipException(
                f"no new or updated patents (read {counts['read']}, unchanged {counts['unchanged']}, "
                f"rejected {counts['rejected']}): the patents Asset is not updated"
            )
        extra = {**counts, "batch_ids": [b["batch_id"] for r in results for b in r.get("batches", [])]}
        outlet_events[PATENTS].extra = extra
        print(f"patents Asset updated: {extra}")
        return extra

    publish_patents(ingest.expand(item=select_sources()))


patent_ingest()
