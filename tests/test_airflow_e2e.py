"""End to end with dag.test(): patent_ingest then patent_retrain on the embedded Postgres and a real S3
(SeaweedFS), a small fixture corpus and tiny models (and their blend, ``ensemble-full``); then again
with no new data.

dag.test() ignores pools and queues, so their assignment is asserted in test_dags.py (DAG graph) and
test_celery.py (a real worker on queue ``gpu``).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import text

from tests.airflow_env import (
    airflow_env,
    connection_json,
    dag_test,
    drop_metadata_database,
    metadata_database,
)
from tests.bulkserver import bulk_server, weekly_ids, weekly_zip

CORPUS = Path(__file__).parent / "fixtures" / "airflow_corpus.jsonl"
LIBRARY = ("patentml.ingest", "patentml.splits", "patentml.train", "patentml.evaluate", "patentml.promote",
           "patentml.report")
MISSING = [m for m in LIBRARY if importlib.util.find_spec(m) is None]
BUCKET = "patentml-e2e"
TINY = {"num_filters": 8, "hidden": 16}
VARIANTS = ["tfidf-full", "glove-wbce-full"]

pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"the library modules {MISSING} have not landed yet")


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.s3server import SeaweedS3

    server = SeaweedS3.start(tmp_path_factory.mktemp("seaweed"))
    try:
        server.create_bucket(BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stack(pg_admin_url: str, db_url: str, s3: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Airflow env for dag.test(): own metadata DB, Connections to the module's PatentML DB and to S3."""
    home = tmp_path_factory.mktemp("e2e")
    metadata = metadata_database(pg_admin_url, "e2e")
    s3_conn = json.loads(s3.airflow_connection())
    s3_conn["extra"]["store_uri"] = f"s3://{BUCKET}/models"
    env = airflow_env(
        home / "airflow",
        metadata,
        {
            "AIRFLOW_CONN_PATENTML_DB": connection_json(db_url),
            "AIRFLOW_CONN_PATENTML_S3": json.dumps(s3_conn),
            "PATENTML_HOME": str(home / "patentml"),
            "PATENTML_INGEST_SOURCE": str(CORPUS),
            "PATENTML_INGEST_ROOTS": str(CORPUS.parent),
            "PATENTML_DEVICE": "cpu",
            "PATENTML_THREADS": "2",
            # Fail fast in tests: a retry would wait minutes in dag.test().
            "PATENTML_TASK_RETRIES": "0",
            "PATENTML_RETRAIN_DEADLINE_HOURS": "0",  # dag.test() in Airflow 3.3.2 cannot finish a run with a deadline
            "PATENTML_TRAIN_RETRIES": "0",
        },
    )
    try:
        yield {"env": env, "home": home}
    finally:
        drop_metadata_database(pg_admin_url, metadata)


def _rows(engine: Any, sql: str, **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text(sql), params)]


def _champion_objects(s3: Any) -> list[str]:
    listing = s3.client().list_objects_v2(Bucket=BUCKET, Prefix="models/models/")  # promoted, not candidates
    return sorted(o["Key"] for o in listing.get("Contents", []))


def _explain(result: dict[str, Any]) -> str:
    return f"{result['dag_id']} {result['state']}: {result['tasks']}\n{result['output']}"


def test_ingest_then_retrain_promotes_a_champion_to_s3(stack: dict[str, Any], engine: Any, s3: Any) -> None:
    started = time.monotonic()
    conf = {"variants": VARIANTS, "epochs": 2, "batch_size": 16, "model_overrides": TINY}
    ingest, retrain = dag_test(stack["env"], [{"dag_id": "patent_ingest"}, {"dag_id": "patent_retrain", "conf": conf}])
    print(f"\nfirst ingest {ingest['seconds']:.1f} s, first retrain {retrain['seconds']:.1f} s "
          f"(process {time.monotonic() - started:.1f} s)")

    assert ingest["state"] == "success", _explain(ingest)
    (batch,) = _rows(engine, "SELECT * FROM ingest_batches")
    assert (batch["status"], batch["n_stored"], batch["n_rejected"]) == ("succeeded", 150, 2)
    assert _rows(engine, "SELECT count(*) AS n FROM rejected_records WHERE whole")[0]["n"] == 2
    (event,) = ingest["asset_events"]
    assert event["extra"]["stored"] == 150 and event["extra"]["rejected"] == 2
    assert event["extra"]["batch_ids"] == [batch["batch_id"]]

    assert retrain["state"] == "success", _explain(retrain)
    assert retrain["tasks"]["variant.train[0]"] == "success" and retrain["tasks"]["variant.train[1]"] == "success"
    assert retrain["tasks"]["blend"] == "success", _explain(retrain)
    assert sorted(retrain["rendered_map_index"].values()) == sorted(VARIANTS * 2)
    runs = _rows(engine, "SELECT run_id, variant, status, settings, snapshot_id FROM runs ORDER BY run_id")
    assert sorted((r["variant"], r["status"]) for r in runs) == sorted(
        (v, "succeeded") for v in [*VARIANTS, "ensemble-full"]
    ), runs
    # Shared Params reach each model only where they apply: the CNN got the tiny sizes, TF-IDF none of them.
    by_variant = {r["variant"]: r for r in runs}
    assert by_variant["glove-wbce-full"]["settings"]["num_filters"] == 8
    assert by_variant["glove-wbce-full"]["settings"]["epochs"] == 2
    assert "num_filters" not in by_variant["tfidf-full"]["settings"] and "epochs" not in by_variant["tfidf-full"]["settings"]
    # The blend: an ensemble of exactly the runs this DAG run trained, on their snapshot, none of the CNN's sizes.
    blend = by_variant["ensemble-full"]
    members = sorted(by_variant[v]["run_id"] for v in VARIANTS)
    assert sorted(blend["settings"]["member_runs"]) == members and "num_filters" not in blend["settings"]
    assert blend["snapshot_id"] == by_variant["tfidf-full"]["snapshot_id"]
    (outcome,) = retrain["xcoms"]["blend"]
    assert (outcome["variant"], outcome["run_id"], sorted(outcome["members"])) == ("ensemble-full", blend["run_id"], members)
    assert "error" not in outcome and outcome["metrics"]["f1"] is not None, outcome
    metrics = _rows(engine, "SELECT run_id, rule, f1, p_at_1, n_patents FROM run_metrics WHERE split = 'test' AND rule = 't0.5'")
    assert len(metrics) == 3 and all(m["n_patents"] > 10 for m in metrics)
    assert blend["run_id"] in {m["run_id"] for m in metrics}
    # The corpus is separable: tiny models must learn something, TF-IDF clearly so.
    best = max(m["f1"] for m in metrics)
    assert best > 0.5, metrics
    assert _rows(engine, "SELECT count(DISTINCT section) AS n FROM section_metrics")[0]["n"] >= 4
    (decision,) = _rows(engine, "SELECT * FROM promotions")
    assert decision["promoted"] and decision["champion_after"], decision
    # Promotion weighed the blend with the single variants.
    promoted = retrain["xcoms"]["promote"]
    assert sorted(promoted["evaluated_variants"]) == sorted([*VARIANTS, "ensemble-full"]), promoted
    assert blend["run_id"] in {c["run_id"] for c in promoted["candidates"]}, promoted["candidates"]
    assert promoted["failed_blends"] == [] and "ensemble-full" in decision["reason"], decision["reason"]
    assert "Blends evaluated: ensemble-full" in retrain["xcoms"]["report"]
    (model,) = _rows(engine, "SELECT * FROM models WHERE model_id = :m", m=decision["champion_after"])
    assert model["store_uri"].startswith(f"s3://{BUCKET}/models")
    objects = _champion_objects(s3)
    assert any(f"/{model['model_id']}/" in key and key.endswith("manifest.json") for key in objects), objects
    # The champion Asset names the promoted model; every run left its candidate in the store.
    assert [e["extra"]["model_id"] for e in retrain["asset_events"]] == [decision["champion_after"]]
    candidates = s3.client().list_objects_v2(Bucket=BUCKET, Prefix="models/candidates/")["Contents"]
    assert {k["Key"].split("/")[2] for k in candidates} == {
        r["artifact_id"] for r in _rows(engine, "SELECT artifact_id FROM runs WHERE status = 'succeeded'")}
    stack["first"] = {"champion": decision["champion_after"], "objects": objects}


def test_second_round_without_new_data_changes_nothing(stack: dict[str, Any], engine: Any, s3: Any) -> None:
    if "first" not in stack:
        pytest.skip("needs the first round")
    # A worse challenger (TF-IDF with almost no regularisation budget) and a failing one (lr < 0 breaks Adam).
    conf = {"variants": VARIANTS, "epochs": 2, "batch_size": 16,
            "model_overrides": {**TINY, "C": 0.0001, "lr": -1.0}}
    ingest, retrain, unchanged = dag_test(
        stack["env"],
        [{"dag_id": "patent_ingest"}, {"dag_id": "patent_retrain", "conf": conf},
         {"dag_id": "patent_retrain", "conf": {**conf, "only_if_changed": True}}],
    )
    print(f"\nsecond ingest {ingest['seconds']:.1f} s, second retrain {retrain['seconds']:.1f} s, "
          f"third (only_if_changed) {unchanged['seconds']:.1f} s")

    # Ingest: read again, nothing stored or updated, so the Asset is not updated.
    assert ingest["state"] == "success", _explain(ingest)
    assert ingest["tasks"]["publish_patents"] == "skipped", _explain(ingest)
    assert ingest["asset_events"] == []
    latest = _rows(engine, "SELECT * FROM ingest_batches ORDER BY batch_id DESC LIMIT 1")[0]
    assert (latest["n_stored"], latest["n_updated"]) == (0, 0)
    assert _rows(engine, "SELECT count(*) AS n FROM patents")[0]["n"] == 150

    # Retrain: the failing variant does not block the other; promotion runs and keeps the champion.
    tasks = retrain["tasks"]
    failed = [k for k, v in tasks.items() if k.startswith("variant.train[") and v == "failed"]
    assert len(failed) == 1, _explain(retrain)
    index = failed[0][len("variant.train["):-1]
    assert tasks[f"variant.evaluate[{index}]"] == "upstream_failed"
    assert tasks["promote"] == "success" and tasks["report"] == "failed", _explain(retrain)
    # One full variant left: nothing to blend, and the blend step says so without failing.
    assert tasks["blend"] == "success" and retrain["xcoms"]["blend"] == [], _explain(retrain)
    assert retrain["xcoms"]["promote"]["evaluated_variants"] == ["tfidf-full"]
    assert retrain["state"] == "failed"  # marked failed after promotion, because a variant failed
    decisions = _rows(engine, "SELECT * FROM promotions ORDER BY promotion_id")
    assert len(decisions) == 2
    assert decisions[-1]["promoted"] is False and decisions[-1]["champion_after"] == stack["first"]["champion"]
    assert _champion_objects(s3) == stack["first"]["objects"]
    assert retrain["asset_events"] == []  # the pointer did not move: no champion event
    print("decisions:", [(d["action"], d["reason"]) for d in decisions])

    # only_if_changed on an unchanged corpus: nothing trained, no decision, and the run succeeds.
    assert unchanged["state"] == "success", _explain(unchanged)
    assert unchanged["tasks"]["variant.train"] == "skipped" and unchanged["tasks"]["report"] == "success"
    assert unchanged["tasks"]["blend"] == "skipped", _explain(unchanged)
    assert _rows(engine, "SELECT count(*) AS n FROM promotions")[0]["n"] == 2
    # tfidf-full, glove-wbce-full and their blend, then tfidf-full again
    assert _rows(engine, "SELECT count(*) AS n FROM runs WHERE status = 'succeeded'")[0]["n"] == 4


def test_score_dag_writes_the_champions_suggestions_once(stack: dict[str, Any], engine: Any) -> None:
    """patent_score (as the patents or champion Asset would start it): the S3 champion's suggestions for every
    patent; a second run finds nothing left to score."""
    if "first" not in stack:
        pytest.skip("needs the first round")
    first, again = dag_test(stack["env"], [{"dag_id": "patent_score"}, {"dag_id": "patent_score"}])
    assert first["state"] == "success", _explain(first)
    assert again["state"] == "success", _explain(again)
    champion = stack["first"]["champion"]
    rows = _rows(engine, "SELECT model_id, count(DISTINCT patent_id) AS n, count(*) FILTER (WHERE rank = 1) AS firsts, "
                         "count(*) FILTER (WHERE selected) AS selected FROM patent_suggestions GROUP BY model_id")
    assert [(r["model_id"], r["n"], r["firsts"]) for r in rows] == [(champion, 150, 150)]
    selected = _rows(engine, "SELECT count(DISTINCT patent_id) AS n FROM patent_suggestions WHERE selected")[0]["n"]
    assert selected > 100  # the decision rule picks labels (the tiny corpus is separable)
    assert (first["xcoms"]["score"]["scored"], first["xcoms"]["score"]["model_id"]) == (150, champion)
    assert (again["xcoms"]["score"]["scored"], again["xcoms"]["score"]["already"]) == (0, 150)


def _patent_ids(engine: Any, candidates: set[str]) -> set[str]:
    rows = _rows(engine, "SELECT patent_id FROM patents WHERE patent_id = ANY(:ids)", ids=sorted(candidates))
    return {r["patent_id"] for r in rows}


def test_ingest_weekly_files_one_task_each_confined_and_by_interval(stack: dict[str, Any], engine: Any,
                                                                   tmp_path: Path) -> None:
    """patent_ingest on USPTO-style weekly zips: from a listing served over HTTP (the newest two, then all
    of them with a broken one among them), a path outside the roots, and a manual run without a logical
    date on a local folder."""
    # The run without a logical date reads the last complete weekly interval (Tuesdays 06:00 UTC) before now.
    now = dt.datetime.now(dt.timezone.utc)
    end = (now - dt.timedelta(days=(now.weekday() - 1) % 7)).replace(hour=6, minute=0, second=0, microsecond=0)
    end -= dt.timedelta(days=7) if end > now else dt.timedelta(0)
    local = tmp_path / "incoming"
    weekly_zip(local, end.date(), 3)  # published on the Tuesday that ends the interval: in it
    weekly_zip(local, (end - dt.timedelta(days=7)).date(), 4)  # 00:00 before the interval's 06:00 start: out
    with bulk_server(tmp_path / "www") as server:
        for week, day in enumerate((dt.date(2025, 1, 7), dt.date(2025, 1, 14), dt.date(2025, 1, 21))):
            weekly_zip(server.root / "2025", day, week)
        listing = f"{server.url}/2025/"
        env = {**stack["env"], "PATENTML_INGEST_ROOTS": str(local), "PATENTML_INGEST_URL_HOSTS": server.netloc}
        # (Each call's output tail is the last run's: the one whose error message is read goes last.)
        newest, outside = dag_test(env, [{"dag_id": "patent_ingest", "conf": {"source": listing, "latest": 2}},
                                         {"dag_id": "patent_ingest", "conf": {"source": "/proc/self/environ"}}])
        # The newest two weeks: one mapped task per file, each labelled with its file, downloaded into PATENTML_HOME.
        assert newest["state"] == "success", _explain(newest)
        assert newest["rendered_map_index"] == {"ingest[0]": "ipg250114.zip", "ingest[1]": "ipg250121.zip"}
        assert _patent_ids(engine, weekly_ids(0) | weekly_ids(1) | weekly_ids(2)) == weekly_ids(1) | weekly_ids(2)
        (event,) = newest["asset_events"]
        assert event["extra"]["stored"] == 5 and len(event["extra"]["batch_ids"]) == 2  # 2 + 2 grants, 1 plant patent
        cached = sorted(p.name for p in (stack["home"] / "patentml" / "cache" / "downloads").rglob("ipg*.zip"))
        assert cached == ["ipg250114.zip", "ipg250121.zip"]

        (server.root / "2025" / "ipg250128.zip").write_bytes(b"PK\x03\x04 cut off")  # a broken week joins
        manual, everything = dag_test(env, [
            {"dag_id": "patent_ingest", "conf": {"source": str(local)}, "logical_date": None},
            {"dag_id": "patent_ingest", "conf": {"source": listing, "by_interval": False}},
        ])

    # A path outside the roots: refused before anything is read, naming the allowed folder.
    assert "/proc/self/environ" not in {b["source"] for b in _rows(engine, "SELECT source FROM ingest_batches")}
    assert outside["state"] == "failed" and outside["tasks"]["select_sources"] == "failed", _explain(outside)
    assert f"outside the folders ingest may read ({local})" in outside["output"]

    # All weeks: the broken file fails alone, the others are stored; the Asset waits for a complete run.
    tasks = everything["tasks"]
    assert everything["rendered_map_index"]["ingest[3]"] == "ipg250128.zip", _explain(everything)
    assert [tasks[f"ingest[{i}]"] for i in range(4)] == ["success", "success", "success", "failed"], _explain(everything)
    assert tasks["publish_patents"] == "upstream_failed" and everything["state"] == "failed"
    assert _patent_ids(engine, weekly_ids(0)) == weekly_ids(0)
    # Its batch is kept as failed with the reason (the task log's tail need not hold it).
    broken = _rows(engine, "SELECT status, message FROM ingest_batches WHERE source LIKE :s", s="%ipg250128.zip")
    assert [b["status"] for b in broken] == ["failed"], broken
    assert "ipg250128.zip: not a readable zip archive" in broken[0]["message"], broken

    # No logical date: the last complete interval before the trigger, worked out above.
    assert manual["state"] == "success", _explain(manual)
    assert manual["data_interval"] == ["None", "None"]
    assert [item["name"] for item in manual["xcoms"]["select_sources"]] == [f"ipg{end:%y%m%d}.zip"]
    assert _patent_ids(engine, weekly_ids(3) | weekly_ids(4)) == weekly_ids(3)
