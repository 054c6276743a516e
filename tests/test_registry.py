"""The variant registry is the one list of model types: a new one is one backend file plus one registry line,
and the CLI, the retrain DAG's Params, training, evaluation, prediction and the UI all see it."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from tests import airflow_env  # noqa: F401  (configures Airflow before it is imported)
from tests.airflow_env import DAGS
from tests.toy import write_toy_jsonl

#: The registry line of the toy model type (tests/toy_backend.py).
TOY_LINE = ("prior", "tests.toy_backend:LabelPrior")


@pytest.fixture
def toy_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    from patentml import variants

    monkeypatch.setitem(variants.BACKENDS, *TOY_LINE)


def test_registry_reads_without_ml_libraries() -> None:
    import subprocess
    import sys

    code = ("import sys; from patentml import variants as v; v.describe(); v.known_variants(); "
            "print([m for m in ('torch', 'numpy', 'sklearn', 'transformers', 'sqlalchemy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_capabilities_are_class_attributes_of_the_backends() -> None:
    from patentml import variants as v

    caps = {d["encoder"]: d for d in v.describe()}
    assert {e for e, d in caps.items() if d["has_loss"]} == {"glove", "bert"}
    assert {e for e, d in caps.items() if d["needs_torch"]} == {"glove", "bert", "embed-linear", "embed-knn"}
    assert {e for e, d in caps.items() if d["can_fine_tune"]} == {"bert", "embed-linear"}
    assert {e for e, d in caps.items() if d["built_from_runs"]} == {"ensemble"}
    assert caps["embed-knn"]["caches"] == ["sentence_vectors"] and caps["bert"]["caches"] == ["token_vectors"]
    assert caps["glove"]["predict_batch"] == 64 and caps["tfidf-svm"]["predict_batch"] == 1024
    assert v.parse_variant("tfidf-svm-full").takes_alpha is False and v.parse_variant("glove-wbce-full").takes_alpha


def test_a_new_variant_is_one_file_and_one_line(toy_registered: None, engine: Any, settings: Any,
                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from patentml.cli import build_parser
    from patentml.evaluate import evaluate_run
    from patentml.ingest import ingest
    from patentml.predict import Predictor
    from patentml.splits import rebuild
    from patentml.train import artifact_path, train
    from patentml_airflow.config import build_variants
    from patentml_airflow.ui import collect

    # the CLI: a choice of `train --variant`
    train_parser = next(a for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions
                        if a.dest == "variant")
    assert {"prior-full", "prior-subset"} <= set(train_parser.choices)
    # the retrain DAG's Params (the trigger form) and its validation
    dag = DagBag(dag_folder=str(DAGS)).dags["patent_retrain"]
    assert "prior-full" in dag.params.get_param("variants").schema["items"]["enum"]
    assert "prior" in dag.params.get_param("encoders").schema["items"]["enum"]
    assert [s["variant"] for s in build_variants({"variants": ["prior-full"]})] == ["prior-full"]
    # training, evaluation and prediction
    ingest(engine, [str(write_toy_jsonl(tmp_path_factory.mktemp("toy") / "toy.jsonl", n=120))])
    rebuild(engine, settings.label_scheme)
    run_id = train("prior-full", settings, engine=engine)
    summary = evaluate_run(engine, run_id, settings)
    assert summary["variant"] == "prior-full" and 0 < summary["rules"][summary["rule"]]["p_at_1"] < 1
    predictor = Predictor(artifact_path(engine, run_id))
    (out,) = predictor.predict(["anything at all"], top_k=1)
    model = predictor.backend
    assert list(out["scores"]) == [model.labels[int(np.argmax(model.prior))]]
    # the UI page: in the variants table and, with its score, on the leaderboard
    data = collect(engine)
    assert "prior" in [v["encoder"] for v in data["variants"]]
    row = next(r for r in data["leaderboard"] if r["run_id"] == run_id)
    assert row["variant"] == "prior-full" and row["f1"] == pytest.approx(summary["rules"][summary["rule"]]["f1"])
    json.dumps(data, default=str)  # what /patentml/api/summary serves
