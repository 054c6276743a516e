"""The prediction service through real HTTP (uvicorn on 127.0.0.1 in a thread) against a real champion in a
file:// store: the same answers as ``Predictor``, the run's metrics, 4xx JSON errors that name the problem,
the bearer token (never logged), a new champion picked up without a restart, Prometheus metrics, OpenAPI."""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import threading
import time
from typing import Any, Iterator

import httpx
import pytest

from patentml.predict import Predictor
from patentml.promote import promote
from patentml.settings import Settings
from patentml.text import tokenize
from tests.test_predict import TEXTS
from tests.test_promote import VOCAB, champion, clone_run, trained  # noqa: F401 (fixtures)


@contextlib.contextmanager
def running(settings: Settings, **app_options: Any) -> Iterator[httpx.Client]:
    """The app on a free 127.0.0.1 port, served by uvicorn in a thread; an HTTP client on it."""
    import uvicorn

    from patentml.serve import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings, **app_options), log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the service did not start"
        time.sleep(0.05)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def client(champion: str, settings: Settings) -> Iterator[httpx.Client]:
    with running(settings.replace(serve_max_batch=5)) as c:
        yield c


def test_health_model_and_predictions_match_the_predictor(client: httpx.Client, champion: str, trained: dict[str, Any],
                                                          engine: Any, settings: Settings) -> None:
    from patentml.db.results import run_scores, score_of

    assert client.get("/healthz").json() == {"status": "ok", "model": champion}
    info = client.get("/v1/model").json()
    with engine.connect() as conn:
        expected = score_of(run_scores(conn, [trained["tfidf"]])[0])
    assert (info["model"], info["variant"], info["run_id"], info["backend"]) == (champion, "tfidf-full",
                                                                                trained["tfidf"], "tfidf")
    assert info["metrics"] == pytest.approx(expected) and info["metrics"]["f1"] > 0.5
    body = {"patents": [{"id": f"p{i}", "abstract": t} for i, t in enumerate(TEXTS)] + [{"abstract": TEXTS[0]}],
            "top_k": 3}
    answer = client.post("/v1/predict", json=body)
    assert answer.status_code == 200, answer.text
    with Predictor.open(settings) as predictor:
        direct = predictor.predict([*TEXTS, TEXTS[0]], top_k=3, ids=["p0", "p1", "p2", "p3", 5])
    assert answer.json() == {"model": champion, "predictions": direct}
    assert [p["labels"][0] for p in direct[:4]] == ["A01B", "H04L", "G06F", "B60W"]


def test_explanations_over_http_name_words_of_the_abstract(client: httpx.Client) -> None:
    answer = client.post("/v1/predict", json={"patents": [{"id": 1, "abstract": TEXTS[1]}], "explain": True,
                                              "top_k": 2, "top_n": 3}).json()
    (p,) = answer["predictions"]
    assert set(p["explanation"]) == set(p["scores"]) | set(p["labels"])
    words = set(tokenize(TEXTS[1]))
    terms = p["explanation"]["H04L"]["terms"]
    assert 1 <= len(terms) <= 3 and all(set(t["term"].split()) <= words for t in terms)
    # The synthetic corpus draws H04L abstracts from its own words: those are the reasons.
    assert {t["term"] for t in terms} <= set(VOCAB["H04L"].split())


@pytest.mark.parametrize(("body", "status", "problem"), [
    ('{"patents": [{"id": 1, "abstract": "x"}', 400, "the body is not valid JSON"),
    ('[1, 2]', 422, "the body must be a JSON object"),
    ('{"patents": [{"id": "a", "abstract": "soil"}, {"id": "b"}]}', 422, "patents[1].abstract: Field required"),
    ('{"patents": [{"abstract": 42}]}', 422, "patents[0].abstract: Input should be a valid string"),
    ('{"patents": [{"id": "a", "abstract": "soil"}, {"id": "b", "abstract": "  "}]}', 422,
     "patents[1] (id 'b'): empty text"),
    ('{"patents": [{"abstract": "!!! ???"}]}', 422, "patents[0] (id 1): text has no words"),
    ('{"patents": []}', 422, "patents: List should have at least 1 item"),
    ('{"patents": [{"abstract": "soil"}], "top_k": -1}', 422, "top_k: Input should be greater than or equal to 0"),
    ('{"patents": [{"abstract": "soil"}], "explain": "maybe"}', 422, "explain: Input should be a valid boolean"),
    ('{"patents": [{"abstract": "soil"}], "topk": 3}', 422, "topk: Extra inputs are not permitted"),
    # A lone surrogate (valid JSON, not Unicode) cannot be echoed back as UTF-8; once a 500 on the way out.
    ('{"patents": [{"id": "a", "abstract": "soil"}, {"id": "\\ud800", "abstract": "soil"}]}', 422,
     'patents[1]: "id" is not valid Unicode: lone surrogate U+D800 at character 1 (an escaped \\ud800 without'),
    ('{"patents": [{"id": "b", "abstract": "soil \\udc80"}]}', 422,
     "patents[0] (id 'b'): text is not valid Unicode: lone surrogate U+DC80 at character 6"),
    (b'{"patents": [{"id": "c", "abstract": "soil \xff"}]}', 400, "the body is not valid UTF-8: byte 0xFF at byte 44"),
    ('{"patents": ' + str([{"abstract": "soil"}] * 6).replace("'", '"') + "}", 413,
     "6 patents in one request, over the limit of 5 (PATENTML_SERVE_MAX_BATCH)"),
])
def test_bad_requests_get_a_4xx_json_error_naming_the_problem(client: httpx.Client, body: str | bytes, status: int,
                                                              problem: str) -> None:
    answer = client.post("/v1/predict", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json" and problem in answer.json()["error"]


def test_other_bad_requests(client: httpx.Client) -> None:
    as_form = client.post("/v1/predict", content='{"patents": [{"abstract": "soil"}]}',
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert as_form.status_code == 422 and "send Content-Type: application/json" in as_form.json()["error"]
    assert client.get("/v1/nothing").status_code == 404 and client.get("/v1/nothing").json() == {"error": "Not Found"}
    assert client.get("/v1/predict").status_code == 405
    huge = client.post("/v1/predict", content=b"x" * (5 * 8 * 50_000 + 1), headers={"Content-Type": "application/json"})
    assert huge.status_code == 413 and "over the limit" in huge.json()["error"]


def test_metrics_and_openapi(client: httpx.Client, champion: str) -> None:
    def count(text: str, route: str, status: int) -> float:
        found = re.search(rf'patentml_http_requests_total{{method="[A-Z]+",route="{re.escape(route)}",'
                          rf'status="{status}"}} ([0-9.]+)', text)
        return float(found.group(1)) if found else 0.0

    before = client.get("/metrics").text
    for _ in range(3):
        client.get("/healthz")
    client.post("/v1/predict", json={"patents": [{"abstract": TEXTS[0]}, {"abstract": TEXTS[1]}]})
    after = client.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    assert count(after.text, "/healthz", 200) == count(before, "/healthz", 200) + 3
    assert count(after.text, "/v1/predict", 200) == count(before, "/v1/predict", 200) + 1
    assert f'patentml_model_info{{model_id="{champion}",variant="tfidf-full"}} 1.0' in after.text
    assert 'patentml_http_request_seconds_bucket{le="0.5",route="/v1/predict"}' in after.text
    patents = [float(m) for m in re.findall(r"^patentml_predicted_patents_total ([0-9.]+)$", after.text, re.M)]
    assert patents and patents[0] >= 2
    assert client.get("/docs").status_code == 200 and "swagger" in client.get("/docs").text.lower()
    schema = client.get("/openapi.json").json()
    assert {"/healthz", "/v1/model", "/v1/predict"} <= set(schema["paths"])
    assert "PredictRequest" in schema["components"]["schemas"]


def test_the_bearer_token_is_required_and_never_logged(champion: str, settings: Settings,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    secret = "tok-" + "5e3c" * 8
    caplog.set_level(logging.DEBUG)
    with running(settings.replace(serve_token=secret)) as c:
        body = {"patents": [{"abstract": TEXTS[0]}]}
        assert c.post("/v1/predict", json=body).status_code == 401
        wrong = c.post("/v1/predict", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert "bearer token" in wrong.json()["error"]
        good = c.post("/v1/predict", json=body, headers={"Authorization": f"Bearer {secret}"})
        assert good.status_code == 200 and good.json()["predictions"][0]["labels"][0] == "A01B"
        assert c.get("/v1/model").status_code == 401
        assert c.get("/healthz").status_code == 200 and c.get("/metrics").status_code == 200  # probes stay open
    assert "uvicorn.access" in caplog.text or "POST /v1/predict" in caplog.text
    assert secret not in caplog.text and secret not in repr(settings.replace(serve_token=secret))


def test_a_new_champion_is_served_without_a_restart(champion: str, trained: dict[str, Any], engine: Any,
                                                    settings: Settings) -> None:
    fast = settings.replace(serve_reload_seconds=0.2)
    with running(fast) as c:
        assert c.get("/v1/model").json()["model"] == champion
        decision = promote(settings, [clone_run(engine, trained["glove"], 1.0, 1.0)], margin=0.0, engine=engine)
        new = decision["champion_after"]
        assert new != champion, decision["reason"]
        deadline = time.monotonic() + 60
        while c.get("/v1/model").json()["model"] != new:
            assert time.monotonic() < deadline, "the service kept the old champion"
            time.sleep(0.1)
        answer = c.post("/v1/predict", json={"patents": [{"abstract": t} for t in TEXTS]}).json()
        with Predictor.open(settings, model_id=new) as predictor:
            assert answer == {"model": new, "predictions": predictor.predict(TEXTS)}
        text = c.get("/metrics").text
        assert f'patentml_model_info{{model_id="{new}",variant="glove-wbce-full"}} 1.0' in text
        assert f'model_id="{champion}"' not in text and "patentml_model_loads_total 2.0" in text


def test_without_a_champion_the_service_says_why(settings: Settings, tmp_path: Any) -> None:
    empty = settings.replace(store_uri=(tmp_path / "empty").as_uri())
    with running(empty) as c:
        health = c.get("/healthz")
        assert health.status_code == 503 and "no champion yet" in health.json()["error"]
        answer = c.post("/v1/predict", json={"patents": [{"abstract": TEXTS[0]}]})
        assert answer.status_code == 503 and "patentml promote" in answer.json()["error"]
