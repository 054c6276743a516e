"""The hook turns Airflow Connections into PatentML settings (environment as fallback); XCom helpers."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest

from tests import airflow_env  # noqa: F401  (configures Airflow before it is imported)
from tests.airflow_env import connection_json



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
