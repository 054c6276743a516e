"""The hook turns Airflow Connections into PatentML settings (environment as fallback); ingest source selection."""

from __future__ import annotations

import datetime as dt
import functools
import http.server
import json
import threading
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest

from tests import airflow_env  # noqa: F401  (configures Airflow before it is imported)
from tests.airflow_env import connection_json

UTC = dt.timezone.utc


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No PATENTML_* or AIRFLOW_CONN_* from outside; the process-wide settings the hook sets are reset after."""
    import os

    from patentml.settings import set_settings

    for key in list(os.environ):
        if key.startswith(("PATENTML_", "AIRFLOW_CONN_")):
            monkeypatch.delenv(key)
    yield monkeypatch
    set_settings(None)


def _hook(**overrides):
    from patentml_airflow.hook import PatentMLHook

    return PatentMLHook(**overrides)


def test_postgres_connection_becomes_the_database_url(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv(
        "AIRFLOW_CONN_PATENTML_DB",
        json.dumps({"conn_type": "postgres", "host": "db.internal", "port": 6543, "login": "ml",
                    "password": "p@ss/word", "schema": "patentml",
                    "extra": {"sslmode": "require", "cursor": "realdictcursor"}}),
    )
    settings = _hook().get_settings()
    assert settings.database_url == "postgresql://ml:p%40ss%2Fword@db.internal:6543/patentml?sslmode=require"
    assert settings.redacted()["database_url"].startswith("postgresql://ml:***@db.internal")


def test_connection_uri_form_and_env_fallback_for_the_rest(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("AIRFLOW_CONN_PATENTML_DB", "postgresql://ml:secret@db.example:5432/corpus")
    clean_env.setenv("PATENTML_HOME", str(tmp_path))
    clean_env.setenv("PATENTML_STORE_URI", "s3://from-env/models")
    clean_env.setenv("PATENTML_PROMOTION_MARGIN", "0.02")
    settings = _hook().get_settings()
    assert settings.database_url == "postgresql://ml:secret@db.example:5432/corpus"
    assert settings.home == tmp_path
    assert settings.store_uri == "s3://from-env/models"
    assert settings.promotion_margin == 0.02
    assert settings.s3_endpoint_url is None  # no patentml_s3 Connection, no PATENTML_S3_ENDPOINT_URL


def test_s3_connection_becomes_store_settings(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv(
        "AIRFLOW_CONN_PATENTML_S3",
        json.dumps({"conn_type": "aws", "login": "AKIATEST", "password": "s3cr3t",
                    "extra": {"endpoint_url": "http://seaweed:8333", "region_name": "eu-west-1",
                              "store_uri": "s3://patentml/models",
                              "config_kwargs": {"s3": {"addressing_style": "path"}}}}),
    )
    clean_env.setenv("PATENTML_DATABASE_URL", "postgresql://u@h/db")
    settings = _hook().get_settings()
    assert (settings.s3_access_key_id, settings.s3_secret_access_key) == ("AKIATEST", "s3cr3t")
    assert (settings.s3_endpoint_url, settings.s3_region) == ("http://seaweed:8333", "eu-west-1")
    assert settings.store_uri == "s3://patentml/models"
    assert settings.database_url == "postgresql://u@h/db"  # from the environment: no patentml_db Connection


def test_overrides_win_and_none_keeps_the_configured_value(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("PATENTML_DATABASE_URL", "postgresql://u@h/db")
    clean_env.setenv("PATENTML_PROMOTION_MARGIN", "0.02")
    assert _hook(promotion_margin=0.1, device="cpu").get_settings().promotion_margin == 0.1
    kept = _hook(promotion_margin=None, device=None).get_settings()
    assert (kept.promotion_margin, kept.device) == (0.02, "auto")


def test_a_connection_without_database_name_is_refused_clearly(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AIRFLOW_CONN_PATENTML_DB", json.dumps({"conn_type": "postgres", "host": "h"}))
    with pytest.raises(ValueError, match="names no database: set its 'schema' field"):
        _hook().get_settings()


def test_socket_connection_reaches_the_embedded_server(clean_env: pytest.MonkeyPatch, db_url: str) -> None:
    """The embedded Postgres listens on a unix socket: the Connection's host is that folder."""
    from sqlalchemy import text

    clean_env.setenv("AIRFLOW_CONN_PATENTML_DB", connection_json(db_url))
    hook = _hook()
    assert hook.get_settings().database_url.startswith("postgresql://postgres@/")
    engine = hook.get_engine(migrate=True)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT current_database()")).scalar() == urlsplit(db_url).path.lstrip("/")
        assert conn.execute(text("SELECT to_regclass('runs')")).scalar() == "runs"
    assert hook.test_connection() == (True, "PatentML database reachable")


# -- ingest source selection ----------------------------------------------------------------------
def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text("x")


def test_weekly_files_are_picked_by_data_interval(tmp_path: Path) -> None:
    from patentml_airflow.sources import file_date, select

    assert file_date("ipg240102.zip") == dt.date(2024, 1, 2)
    assert file_date("https://bulkdata.uspto.gov/x/ipa231228.zip") == dt.date(2023, 12, 28)
    assert file_date("uspto-cpc-random.jsonl") is None and file_date("ipg991399.xml") is None
    _touch(tmp_path / "weekly", "ipg231226.zip", "ipg240102.zip", "ipg240109.zip", "ipa240104.xml.gz", ".ipg240102.zip")
    # The run of the week ending Tuesday 2 Jan 2024 06:00 reads the file published that Tuesday.
    start, end = dt.datetime(2023, 12, 26, 6, tzinfo=UTC), dt.datetime(2024, 1, 2, 6, tzinfo=UTC)
    chosen = select([str(tmp_path / "weekly")], start, end)
    assert [Path(p).name for p in chosen.selected] == ["ipg240102.zip"]
    assert sorted(Path(p).name for p in chosen.outside) == ["ipa240104.xml.gz", "ipg231226.zip", "ipg240109.zip"]
    everything = select([str(tmp_path / "weekly" / "ipg*.zip")], start, end, by_interval=False)
    assert [Path(p).name for p in everything.selected] == ["ipg231226.zip", "ipg240102.zip", "ipg240109.zip"]


def test_undated_sources_are_read_whole(tmp_path: Path) -> None:
    from patentml_airflow.sources import select, split_sources

    _touch(tmp_path / "jsonl", "a.jsonl", "b.jsonl.gz")
    start, end = dt.datetime(2024, 1, 1, tzinfo=UTC), dt.datetime(2024, 1, 8, tzinfo=UTC)
    chosen = select(split_sources(f"{tmp_path / 'jsonl'}, {tmp_path / 'jsonl' / 'a.jsonl'}\n"), start, end)
    # A folder without dated files goes to the library as it is (it groups PatentsView tables by folder).
    assert chosen.selected == [str(tmp_path / "jsonl"), str(tmp_path / "jsonl" / "a.jsonl")]


def test_missing_and_empty_sources_say_what_to_do(tmp_path: Path) -> None:
    from patentml_airflow.sources import SourceError, select

    with pytest.raises(SourceError, match="PATENTML_INGEST_SOURCE"):
        select([], None, None)
    with pytest.raises(SourceError, match="not found"):
        select([str(tmp_path / "nope" / "*.jsonl")], None, None)


@pytest.fixture
def http_folder(tmp_path: Path):
    """A local HTTP server with a directory listing, like USPTO's bulk-data pages."""
    root = tmp_path / "www"
    _touch(root / "2024", "ipg240102.zip", "ipg240109.zip", "README.txt")
    (root / "2024" / "ipg240102.zip").write_bytes(b"PK-week-1")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_listing_is_filtered_by_interval_and_downloaded_once(http_folder: str, tmp_path: Path) -> None:
    from patentml_airflow.sources import localize, select

    start, end = dt.datetime(2023, 12, 26, 6, tzinfo=UTC), dt.datetime(2024, 1, 2, 6, tzinfo=UTC)
    chosen = select([http_folder + "/2024/"], start, end)
    assert chosen.selected == [http_folder + "/2024/ipg240102.zip"]
    assert chosen.outside == [http_folder + "/2024/ipg240109.zip"]  # README.txt is no data file
    (local,) = localize(chosen.selected, tmp_path / "downloads")
    assert Path(local).name == "ipg240102.zip" and Path(local).read_bytes() == b"PK-week-1"
    assert not list((tmp_path / "downloads").rglob("*.part"))
    assert localize(chosen.selected, tmp_path / "downloads") == [local]  # cached by URL


def test_xcom_helpers_keep_results_plain() -> None:
    from patentml_airflow.xcom import headline, jsonable, split_outcomes

    class Scalar:  # a numpy scalar look-alike
        def item(self) -> float:
            return 0.5

    assert jsonable({"f1": Scalar(), "when": dt.date(2024, 1, 2), "nan": float("nan"), "p": Path("/x")}) == {
        "f1": 0.5, "when": "2024-01-02", "nan": None, "p": "/x"
    }
    summary = {"run_id": 3, "variant": "tfidf-full", "n_patents": 30, "predict_seconds": 0.1, "rule": "tuned",
               "rules": {"t0.5": {"f1": 0.9, "p_at_1": 1.0}, "tuned": {"f1": 0.95, "p_at_1": 0.9}}}
    # The run's own rule, not the paper's 0.5: the score every screen shows.
    assert headline(summary) == {"run_id": 3, "variant": "tfidf-full", "n_patents": 30, "f1": 0.95, "p_at_1": 0.9,
                                 "rule": "tuned"}
    specs = [{"variant": "glove-bce-full"}, {"variant": "tfidf-full"}]
    evaluated, failed = split_outcomes(specs, {"variant": "tfidf-full", "run_id": 3})
    assert [e["run_id"] for e in evaluated] == [3] and failed == ["glove-bce-full"]
    assert split_outcomes(specs, [None]) == ([], ["glove-bce-full", "tfidf-full"])


@pytest.mark.parametrize(
    ("specs", "results", "decision", "problem"),
    [
        (None, None, None, "failed before training"),
        ([], None, None, None),
        ([{"variant": "tfidf-full"}], [None], None, "no variant could be evaluated"),
        ([{"variant": "tfidf-full"}], [{"variant": "tfidf-full", "run_id": 1}], None, "promotion did not complete"),
        ([{"variant": "tfidf-full"}, {"variant": "glove-bce-full"}], [{"variant": "tfidf-full", "run_id": 1}],
         {"promoted": True, "champion": "m1", "reason": "first"}, "1 of 2 variants failed (glove-bce-full)"),
        ([{"variant": "tfidf-full"}], [{"variant": "tfidf-full", "run_id": 1}], {"promoted": False, "reason": "worse"}, None),
    ],
)
def test_run_outcome_fails_the_run_for_any_failed_step(specs, results, decision, problem) -> None:
    from patentml_airflow.xcom import run_outcome

    text, found = run_outcome(specs, results, decision)
    assert (found is None) if problem is None else (problem in found), (text, found)


def test_blend_helpers_group_by_dataset_and_split_failures() -> None:
    from patentml_airflow.xcom import blend_groups, split_blends

    evaluated = [{"variant": "tfidf-full", "run_id": 1}, {"variant": "glove-wbce-full", "run_id": 2},
                 {"variant": "tfidf-subset", "run_id": 3}]
    assert {d: [r["run_id"] for r in runs] for d, runs in blend_groups(evaluated).items()} == {"full": [1, 2]}
    ok = {"variant": "ensemble-full", "run_id": 4, "members": [1, 2], "metrics": {"f1": 0.8}}
    broken = {"variant": "ensemble-subset", "members": [3, 5], "error": "DataError: too few members"}
    assert split_blends([ok, broken]) == ([ok], [broken])
    assert split_blends(None) == ([], []) and split_blends([]) == ([], [])


FULL_PAIR = [{"variant": "tfidf-full"}, {"variant": "glove-bce-full"}]
FULL_PAIR_DONE = [{"variant": "tfidf-full", "run_id": 1}, {"variant": "glove-bce-full", "run_id": 2}]
DECIDED = {"promoted": True, "champion": "m1", "reason": "first"}


@pytest.mark.parametrize(
    ("blends", "blend", "problem", "shown"),
    [
        ([{"variant": "ensemble-full", "run_id": 3, "members": [1, 2]}], True, None,
         "Blends evaluated: ensemble-full (run 3 of runs 1, 2)"),
        ([{"variant": "ensemble-full", "members": [1, 2], "error": "DataError: boom"}], True,
         "the blend failed (ensemble-full)", "Blends failed: ensemble-full (DataError: boom)"),
        (None, True, "the blend failed (ensemble-full)", "the blend task did not complete"),
        ([], False, None, "Blends: off"),
    ],
)
def test_run_outcome_names_the_blends(blends, blend: bool, problem, shown: str) -> None:
    from patentml_airflow.xcom import run_outcome

    text, found = run_outcome(FULL_PAIR, FULL_PAIR_DONE, DECIDED, blends=blends, blend=blend)
    assert shown in text, text
    assert (found is None) if problem is None else (problem in found), (text, found)
    # fail_on_variant_failure off: named in the text, the run is not marked failed for it
    assert run_outcome(FULL_PAIR, FULL_PAIR_DONE, DECIDED, False, blends=blends, blend=blend)[1] is None
