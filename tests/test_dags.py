"""DAG integrity: every DAG file parses fast with no heavy imports, the graph and wiring are as designed,
and Params refuse bad values with a clear message."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests import airflow_env  # noqa: F401  (configures Airflow before it is imported)
from tests.airflow_env import DAGS, REPO

HEAVY = ("torch", "transformers", "sklearn", "pandas", "patentml.train", "patentml.nn")
EXPECTED_DAGS = {"patent_ingest", "patent_retrain", "patent_score", "patentml_worker_check"}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_dags_parse_in_a_clean_process_without_heavy_imports() -> None:
    """A fresh interpreter (clean sys.modules) parses dags/ and reports what got imported and how long it took."""
    script = textwrap.dedent(
        f"""
        import json, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from tests import airflow_env
        import airflow
        from airflow.dag_processing.dagbag import DagBag
        started = time.perf_counter()
        bag = DagBag(dag_folder={str(DAGS)!r})
        first = time.perf_counter() - started
        started = time.perf_counter()
        DagBag(dag_folder={str(DAGS)!r})
        second = time.perf_counter() - started
        print("RESULT " + json.dumps({{
            "first": first, "second": second, "dags": sorted(bag.dags),
            "errors": {{k: str(v) for k, v in bag.import_errors.items()}},
            "heavy": [m for m in {HEAVY!r} if m in sys.modules],
        }}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    print(
        f"\nDAG parse time ({len(result['dags'])} DAGs): first {result['first']:.3f} s, "
        f"again {result['second']:.3f} s"
    )
    assert result["errors"] == {}
    assert set(result["dags"]) == EXPECTED_DAGS
    assert result["heavy"] == [], f"parsing the DAGs imported {result['heavy']}"  # timings: benchmarks/startup.py


def test_no_import_errors_tags_and_retries(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dags) == EXPECTED_DAGS
    for dag_id, dag in dagbag.dags.items():
        assert "patentml" in dag.tags, dag_id
        assert dag.catchup is False, dag_id
        assert dag.doc_md and dag_id in dag.doc_md, dag_id
        for t in dag.tasks:
            assert t.retries is not None and t.retries >= 0, (dag_id, t.task_id)
    for dag_id in ("patent_ingest", "patent_retrain", "patent_score"):
        dag = dagbag.dags[dag_id]
        assert dag.default_args["retries"] >= 1, dag_id
        assert dag.max_active_runs == 1


def _graph(dag) -> dict[str, set[str]]:
    return {t.task_id: set(t.downstream_task_ids) for t in dag.tasks}


def test_ingest_graph_and_asset(dagbag) -> None:
    dag = dagbag.dags["patent_ingest"]
    assert _graph(dag) == {
        "select_sources": {"ingest"},
        "ingest": {"publish_patents"},
        "publish_patents": set(),
    }
    outlets = dag.get_task("publish_patents").outlets
    assert [(o.name, o.uri) for o in outlets] == [
        ("patentml_patents", "postgres://patentml:5432/patentml/public/patents")
    ]
    assert not dag.get_task("ingest").outlets, "only publish_patents may update the Asset"
    # A data-interval timetable: weekly files are picked by the interval, which a trigger timetable lacks.
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"
    assert set(dag.params) == {"source", "format", "by_interval", "latest"}
    # One mapped ingest task per file: a file retries alone, files run in parallel.
    ingest = dag.get_task("ingest")
    assert type(ingest).__name__.endswith("MappedOperator") and ingest.retries >= 1
    assert ingest.map_index_template == "{{ ingest_item }}"


def test_ingest_params_refuse_a_bad_latest(dagbag) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    dag = dagbag.dags["patent_ingest"]
    assert _validated(dag, {})["latest"] is None and _validated(dag, {"latest": 3})["latest"] == 3
    for bad in (0, -2, "three", 1.5):
        with pytest.raises(ParamValidationError, match="param latest"):
            _validated(dag, {"latest": bad})


def test_score_runs_on_new_patents_or_a_new_champion(dagbag) -> None:
    """patent_score: one task, scheduled on either Asset (an AssetAny of the two), Params with bounds."""
    from airflow.sdk.definitions.asset import AssetAny

    dag = dagbag.dags["patent_score"]
    assert _graph(dag) == {"score": set()}
    assert type(dag.timetable).__name__ == "AssetTriggeredTimetable"
    condition = dag.timetable.asset_condition
    assert isinstance(condition, AssetAny)
    assert sorted((a.name, a.uri) for a in condition.objects) == [
        ("patentml_champion", "patentml://models/pointers/champion"),
        ("patentml_patents", "postgres://patentml:5432/patentml/public/patents"),
    ]
    assert not dag.get_task("score").outlets
    assert _validated(dag, {}) == {"top_k": 5, "rescore": False, "since": None, "reuse_vectors": False}
    from airflow.sdk.exceptions import ParamValidationError

    for bad in ({"top_k": 0}, {"rescore": "yes"}):
        with pytest.raises(ParamValidationError):
            _validated(dag, bad)


def test_retrain_graph_pools_queues_and_trigger_rules(dagbag) -> None:
    from airflow.sdk import TriggerRule

    dag = dagbag.dags["patent_retrain"]
    assert _graph(dag) == {
        "rebuild_splits": {"plan_variants"},
        "plan_variants": {"variant.train"},
        "variant.train": {"variant.evaluate"},
        # promote also hangs off the variants directly, so a crashed blend task cannot hold promotion back
        "variant.evaluate": {"blend", "promote"},
        "blend": {"promote"},
        "promote": {"approve_promotion"},
        "approve_promotion": {"apply_promotion"},
        "apply_promotion": {"publish_champion"},
        "publish_champion": {"report"},
        "report": set(),
    }
    train, evaluate = dag.get_task("variant.train"), dag.get_task("variant.evaluate")
    assert (train.pool, train.queue) == ("gpu", "gpu")
    for task_id in ("rebuild_splits", "plan_variants", "variant.evaluate", "blend", "promote", "approve_promotion",
                    "apply_promotion", "publish_champion", "report"):
        t = dag.get_task(task_id)
        assert t.pool != "gpu" and t.queue != "gpu", task_id
    # Mapped per variant, inside one mapped group: evaluate[i] waits for train[i] only.
    assert train.task_group.group_id == "variant" and evaluate.task_group.group_id == "variant"
    assert type(train.task_group).__name__ == "MappedTaskGroup"
    assert evaluate.trigger_rule == TriggerRule.ALL_SUCCESS
    assert dag.get_task("promote").trigger_rule == TriggerRule.ALL_DONE_MIN_ONE_SUCCESS
    # The blend runs when at least one variant was evaluated, also when others failed.
    assert dag.get_task("blend").trigger_rule == TriggerRule.ALL_DONE_MIN_ONE_SUCCESS
    assert dag.get_task("report").trigger_rule == TriggerRule.ALL_DONE
    assert train.execution_timeout is not None
    # Approval is skipped (not failed) when nothing is held; apply and publish run after a skip too.
    assert dag.get_task("apply_promotion").trigger_rule == TriggerRule.NONE_FAILED
    assert dag.get_task("publish_champion").trigger_rule == TriggerRule.NONE_FAILED


def test_retrain_failures_are_heard_and_promotion_updates_the_champion_asset(dagbag) -> None:
    from airflow.providers.standard.operators.hitl import ApprovalOperator
    from airflow.sdk import AsyncCallback

    from patentml_airflow.alerts import PatentMLAlert

    dag = dagbag.dags["patent_retrain"]
    assert isinstance(dag.on_failure_callback, PatentMLAlert)  # one e-mail per failed run
    (deadline,) = dag.deadline
    assert type(deadline.reference).__name__ == "DagRunQueuedAtDeadline"
    assert deadline.interval.total_seconds() == 8 * 3600
    assert isinstance(deadline.callback, AsyncCallback)
    assert deadline.callback.path == "patentml_airflow.alerts.PatentMLAlert"
    assert "missed its deadline" in deadline.callback.kwargs["subject"]
    outlets = dag.get_task("publish_champion").outlets
    assert [(o.name, o.uri) for o in outlets] == [("patentml_champion", "patentml://models/pointers/champion")]
    assert not dag.get_task("promote").outlets and not dag.get_task("apply_promotion").outlets
    approve = dag.get_task("approve_promotion")
    assert isinstance(approve, ApprovalOperator) and approve.defaults == ["Reject"]
    assert approve.response_timeout.total_seconds() == 24 * 3600


@pytest.mark.parametrize(
    ("only_if_changed", "run_type", "skips"),
    [(None, "scheduled", True), (None, "asset_triggered", True), (None, "manual", False),
     (None, "DagRunType.SCHEDULED", True), (True, "manual", True), (False, "scheduled", False)],
)
def test_nightly_runs_skip_an_unchanged_corpus_and_manual_runs_train(only_if_changed, run_type, skips) -> None:
    from patentml_airflow.config import skips_unchanged

    assert skips_unchanged(only_if_changed, run_type) is skips


def test_only_if_changed_and_approval_params(dagbag) -> None:
    dag = dagbag.dags["patent_retrain"]
    defaults = _validated(dag, {})
    assert defaults["only_if_changed"] is None and defaults["approve_promotion"] is False
    assert _validated(dag, {"only_if_changed": True, "approve_promotion": True})["approve_promotion"] is True


def test_retrain_blends_after_the_variants_and_before_promotion(dagbag) -> None:
    """variant -> blend -> promote -> report, as ordered steps (upstream closure, not just direct edges)."""
    dag = dagbag.dags["patent_retrain"]
    blend, promote, report = (dag.get_task(t) for t in ("blend", "promote", "report"))
    assert {"variant.train", "variant.evaluate"} <= blend.get_flat_relative_ids(upstream=True)
    assert "blend" in promote.get_flat_relative_ids(upstream=True)
    assert {"blend", "promote"} <= report.get_flat_relative_ids(upstream=True)
    assert blend.task_group is None or blend.task_group.group_id is None, "blend runs once, not per variant"
    assert "blend" not in dag.get_task("variant.evaluate").get_flat_relative_ids(upstream=True)


def test_unpausing_retrain_waits_for_the_next_night(dagbag) -> None:
    """No start_date: the first scheduled run is the next 02:00, not an immediate one for the last missed tick."""
    import datetime as dt

    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.base import TimeRestriction

    dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dagbag.dags["patent_retrain"]))
    assert dag.start_date is None
    info = dag.timetable.next_dagrun_info(
        last_automated_data_interval=None, restriction=TimeRestriction(earliest=None, latest=None, catchup=False)
    )
    now = dt.datetime.now(dt.timezone.utc)
    assert now < info.run_after <= now + dt.timedelta(days=1) and (info.run_after.hour, info.run_after.minute) == (2, 0)


def test_worker_check_runs_in_the_training_pool_and_queue(dagbag) -> None:
    probe = dagbag.dags["patentml_worker_check"].get_task("probe")
    assert (probe.pool, probe.queue) == ("gpu", "gpu")
    assert type(dagbag.dags["patentml_worker_check"].timetable).__name__ == "NullTimetable"


@pytest.mark.parametrize(
    ("mode", "kind"),
    [("nightly", "CronTriggerTimetable"), ("asset", "AssetTriggeredTimetable"), ("both", "AssetOrTimeSchedule"),
     ("none", "NullTimetable")],
)
def test_retrain_schedule_is_configurable(monkeypatch: pytest.MonkeyPatch, mode: str, kind: str) -> None:
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("PATENTML_RETRAIN_SCHEDULE", mode)
    monkeypatch.setenv("PATENTML_TRAIN_POOL", "a100")
    monkeypatch.setenv("PATENTML_TRAIN_QUEUE", "cuda")
    bag = DagBag(dag_folder=str(DAGS / "patent_retrain.py"))
    assert bag.import_errors == {}
    dag = bag.dags["patent_retrain"]
    assert type(dag.timetable).__name__ == kind
    assert (dag.get_task("variant.train").pool, dag.get_task("variant.train").queue) == ("a100", "cuda")


def test_a_bad_environment_setting_is_an_import_error_that_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("PATENTML_RETRAIN_SCHEDULE", "hourly")
    bag = DagBag(dag_folder=str(DAGS / "patent_retrain.py"))
    (message,) = bag.import_errors.values()
    assert "PATENTML_RETRAIN_SCHEDULE='hourly' must be one of nightly, asset, both, none" in message


# -- Params ---------------------------------------------------------------------------------------
def _validated(dag, conf: dict) -> dict:
    """Validate ``conf`` the way a trigger does: on the serialized DAG, as the API and scheduler see it."""
    from airflow.serialization.serialized_objects import DagSerialization

    serialized = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    return serialized.params.deep_merge(conf).validate()


def test_retrain_params_accept_a_manual_matrix(dagbag) -> None:
    dag = dagbag.dags["patent_retrain"]
    defaults = _validated(dag, {})
    assert defaults["variants"] == ["tfidf-svm-full", "embed-linear-full", "embed-knn-full", "glove-bce-full",
                                    "glove-wbce-full", "bert-bce-full", "bert-wbce-full"]
    values = _validated(
        dag,
        {"variants": [], "encoders": ["glove", "tfidf"], "losses": ["wbce"], "datasets": ["full", "subset"],
         "epochs": 3, "batch_size": 64, "alpha": 3.5, "promotion_margin": 0.01,
         "model_overrides": {"num_filters": 64}},
    )
    assert values["epochs"] == 3 and values["alpha"] == 3.5
    assert defaults["blend"] is True and _validated(dag, {"blend": False})["blend"] is False


@pytest.mark.parametrize(("value", "default"), [(None, True), ("false", False), ("OFF", False), ("1", True)])
def test_blend_param_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch, value, default: bool) -> None:
    from airflow.dag_processing.dagbag import DagBag

    if value is None:
        monkeypatch.delenv("PATENTML_RETRAIN_BLEND", raising=False)
    else:
        monkeypatch.setenv("PATENTML_RETRAIN_BLEND", value)
    bag = DagBag(dag_folder=str(DAGS / "patent_retrain.py"))
    assert bag.import_errors == {}
    dag = bag.dags["patent_retrain"]
    param = dag.params.get_param("blend")
    assert param.value is default and param.schema["type"] == "boolean"
    assert param.schema.get("title") and "PATENTML_RETRAIN_BLEND" in (param.description or "")
    assert _validated(dag, {})["blend"] is default


def test_a_bad_blend_setting_is_an_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("PATENTML_RETRAIN_BLEND", "maybe")
    bag = DagBag(dag_folder=str(DAGS / "patent_retrain.py"))
    (message,) = bag.import_errors.values()
    assert "PATENTML_RETRAIN_BLEND='maybe' must be one of" in message


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"alpha": -1}, "alpha"),
        ({"epochs": 0}, "epochs"),
        ({"epochs": "ten"}, "epochs"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"encoders": ["glove", "gpt"]}, "encoders"),
        ({"losses": ["focal"]}, "losses"),
        ({"datasets": ["everything"]}, "datasets"),
        ({"variants": ["glove-full"]}, "variants"),
        ({"promotion_margin": 1.5}, "promotion_margin"),
        ({"model_overrides": "num_filters=8"}, "model_overrides"),
        ({"device": "tpu"}, "device"),
        ({"blend": "yes"}, "blend"),
    ],
)
def test_retrain_params_refuse_bad_values_with_a_clear_message(dagbag, conf: dict, message: str) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError) as err:
        _validated(dagbag.dags["patent_retrain"], conf)
    assert f"Invalid input for param {message}" in str(err.value)


def test_ingest_params_refuse_an_unknown_format(dagbag) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="param format"):
        _validated(dagbag.dags["patent_ingest"], {"format": "csv"})


# -- the variant matrix (pure function behind plan_variants) -------------------------------------
def test_variant_matrix_from_params() -> None:
    from patentml_airflow.config import build_variants

    specs = build_variants(
        {"variants": [], "encoders": ["glove", "bert", "tfidf"], "losses": ["bce", "wbce"], "datasets": ["full"],
         "epochs": 2, "batch_size": None, "alpha": 2.0, "seed": 1, "device": None, "model_overrides": {"hidden": 16}}
    )
    assert [s["variant"] for s in specs] == [
        "glove-bce-full", "glove-wbce-full", "bert-bce-full", "bert-wbce-full", "tfidf-full"
    ]
    assert specs[0] == {
        "variant": "glove-bce-full", "epochs": 2, "batch_size": None, "alpha": 2.0, "seed": 1, "device": None,
        "overrides": {"hidden": 16},
    }
    explicit = build_variants({"variants": ["tfidf-subset", "glove-wbce-full", "tfidf-subset"], "encoders": ["bert"]})
    assert [s["variant"] for s in explicit] == ["tfidf-subset", "glove-wbce-full"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"variants": ["bert-full"]}, "needs a loss: bert-bce-full or bert-wbce-full"),
        ({"variants": ["glove-wbce-fulll"]}, "must end with a dataset"),
        ({"variants": ["ensemble-full"]}, "built from other runs by the blend step"),
        ({"encoders": [], "losses": ["bce"], "datasets": ["full"]}, "at least one encoder"),
        ({"encoders": ["glove"], "losses": [], "datasets": ["full"]}, "need at least one loss"),
        ({"encoders": ["glove"], "losses": ["bce"], "datasets": ["full"], "model_overrides": [1]}, "JSON object"),
    ],
)
def test_variant_matrix_refuses_what_cannot_be_trained(params: dict, message: str) -> None:
    from patentml_airflow.config import ConfigurationError, build_variants

    with pytest.raises(ConfigurationError, match=message):
        build_variants(params)


def test_tfidf_alone_needs_no_loss() -> None:
    from patentml_airflow.config import build_variants

    assert [s["variant"] for s in build_variants({"encoders": ["tfidf"], "losses": [], "datasets": ["subset"]})] == [
        "tfidf-subset"
    ]


def test_model_overrides_scope_by_encoder_and_variant() -> None:
    from patentml_airflow.config import ConfigurationError, overrides_for

    o = {"dropout": 0.3, "glove": {"num_filters": 256, "dropout": 0.2}, "glove-wbce-full": {"dropout": 0.1},
         "ensemble": {"max_members": 2}}
    assert overrides_for(o, "glove-bce-full") == {"dropout": 0.2, "num_filters": 256}
    assert overrides_for(o, "glove-wbce-full") == {"dropout": 0.1, "num_filters": 256}
    assert overrides_for(o, "tfidf-svm-full") == {"dropout": 0.3}
    assert overrides_for(o, "embed-knn-full") == {"dropout": 0.3}
    assert overrides_for(o, "ensemble-full") == {"dropout": 0.3, "max_members": 2}
    with pytest.raises(ConfigurationError, match="glove"):
        overrides_for({"glove": 3}, "glove-bce-full")


def test_retrain_overrides_default_comes_from_the_environment(monkeypatch) -> None:
    from patentml_airflow.config import ConfigurationError, DagConfig

    monkeypatch.setenv("PATENTML_RETRAIN_OVERRIDES", '{"glove": {"num_filters": 128}}')
    assert DagConfig.from_env().default_overrides == {"glove": {"num_filters": 128}}
    monkeypatch.setenv("PATENTML_RETRAIN_OVERRIDES", "[1]")
    with pytest.raises(ConfigurationError, match="PATENTML_RETRAIN_OVERRIDES"):
        DagConfig.from_env()


def test_nightly_defaults_fine_tune_the_minilm_head_and_tune_glove_only(dagbag) -> None:
    from patentml_airflow.config import GLOVE_TUNED, build_variants

    dag = dagbag.dags["patent_retrain"]
    specs = {s["variant"]: s for s in build_variants(_validated(dag, {}))}
    assert specs["embed-linear-full"]["overrides"] == {"fine_tune": True}
    assert specs["glove-wbce-full"]["overrides"] == GLOVE_TUNED and GLOVE_TUNED["alpha"] == 4.0
    assert specs["tfidf-svm-full"]["overrides"] == {} and specs["bert-bce-full"]["overrides"] == {}
