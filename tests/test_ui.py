"""The PatentML page on a real api-server: permissions from Airflow's auth manager, real rows from Postgres read in
one statement, each run under its own score, server-drawn SVG charts, the champion of a real S3 store answering a
pasted abstract, an error page without the database's host or user, escaping; the page inside the Airflow UI in
headless Chromium (screenshots); a manual trigger with a bad Param is refused with a clear message."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import text

from tests import system
from tests.airflow_env import (
    ApiServer,
    airflow_env,
    connection_json,
    drop_metadata_database,
    http,
    metadata_database,
    run_airflow,
    write_passwords,
)
from tests.test_promote import FIRST_FIVE, GLOVE_OVERRIDES, make_patents, write_jsonl

EVIL = '<script>alert("x")</script>'
ESCAPED = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;"
ABSTRACT = ("A router forwards each packet over the network channel using an encryption protocol; the frame header "
            "carries the node address and the latency budget of the transmission.")
#: A signed-in user whom the auth manager grants nothing (the simple auth manager: a user without a role).
NOBODY = ("nobody", "nobody-pw")


def insert_rows(engine: Any) -> dict[str, Any]:
    """A small, hand-made history: two ingest batches, three runs (one failed), a champion, two decisions.

    Ids are explicit and low; the sequences are moved past them so real rows written afterwards follow.
    """
    with engine.begin() as conn:
        conn.execute(text("""
            INSERT INTO ingest_batches (batch_id, source, format, status, finished_at, n_read, n_stored,
                                        n_updated, n_unchanged, n_rejected, n_skipped, seconds)
            VALUES (1, '/data/ipg240102.zip', 'uspto-xml', 'succeeded', now(), 7412, 7301, 0, 0, 96, 15, 41.5),
                   (2, :evil_source, 'jsonl', 'succeeded', now(), 150, 0, 2, 147, 1, 0, 0.4)
        """), {"evil_source": "/data/" + EVIL + ".jsonl"})
        conn.execute(text("""
            INSERT INTO rejected_records (batch_id, source, position, reason)
            SELECT 1, '/data/ipg240102.zip', 'doc ' || g, CASE WHEN g <= 60 THEN 'empty abstract' ELSE 'no valid label' END
            FROM generate_series(1, 96) g
        """))
        conn.execute(text("""
            INSERT INTO rejected_records (batch_id, source, position, reason)
            VALUES (2, 'x.jsonl', 'line 7', :reason)
        """), {"reason": "broken line " + EVIL})
        conn.execute(text("""
            INSERT INTO dataset_snapshots (snapshot_id, label_scheme, fingerprint, params)
            VALUES (1, 'CPC', 'f00d', '{}')
        """))
        conn.execute(text("""
            INSERT INTO runs (run_id, variant, encoder, loss, dataset, snapshot_id, status, settings, started_at,
                              finished_at, train_seconds, device, error, seed, rule)
            VALUES (11, 'glove-wbce-full', 'glove', 'wbce', 'full', 1, 'succeeded', '{}', now() - interval '3 hours',
                    now() - interval '2 hours', 3512.0, 'cuda', NULL, 0, 'tuned'),
                   (12, 'bert-bce-full', 'bert', 'bce', 'full', 1, 'failed', '{}', now() - interval '2 hours',
                    now() - interval '110 minutes', NULL, 'cuda', :error, 0, NULL),
                   (13, 'tfidf-full', 'tfidf', NULL, 'full', 1, 'succeeded', '{}', now() - interval '1 hour',
                    now() - interval '58 minutes', 95.2, 'cpu', NULL, 0, 't0.5')
        """), {"error": "CUDA out of memory " + EVIL})
        metrics = "precision, recall, f1, p_at_1, r_at_1, f1_at_1, p_at_5, r_at_5, f1_at_5, mean_pred_labels, mean_true_labels, empty_share, n_patents"
        conn.execute(text(f"""
            INSERT INTO run_metrics (run_id, split, rule, threshold, keep_top, {metrics})
            VALUES (11, 'test', 't0.5', 0.5, false, 0.7, 0.3, 0.4011, 0.8131, 0.52, 0.6, 0.3, 0.8453, 0.44, 1.1, 1.9, 0.2, 1480),
                   (11, 'test', 'tuned', 0.31, false, 0.6612, 0.5127, 0.5487, 0.8131, 0.52, 0.6, 0.3, 0.8453, 0.44, 1.4, 1.9, 0.03, 1480),
                   (13, 'test', 't0.5', 0.5, false, 0.7010, 0.3504, 0.4388, 0.7704, 0.5, 0.6, 0.3, 0.7912, 0.44, 1.1, 1.9, 0.12, 1480)
        """))
        conn.execute(text("""
            INSERT INTO section_metrics (run_id, split, rule, section, precision, recall, f1, n_patents)
            VALUES (11, 'test', 'tuned', 'A', 0.7011, 0.6012, 0.6473, 311),
                   (11, 'test', 'tuned', 'H', 0.6801, 0.5799, 0.6260, 402),
                   (11, 'test', 't0.5', 'A', 0.1, 0.1, 0.1, 311)
        """))
        conn.execute(text("""
            INSERT INTO models (model_id, run_id, variant, snapshot_id, store_uri, manifest_sha256, metrics)
            VALUES ('m-20240102-glove-wbce-full-7f3a', 11, 'glove-wbce-full', 1,
                    's3://patentml/models/m-20240102-glove-wbce-full-7f3a', repeat('a', 64), '{}')
        """))
        conn.execute(text("""
            INSERT INTO promotions (promotion_id, decided_at, action, promoted, challenger_model_id, challenger_run_id,
                                    champion_before, champion_after, metric, challenger_score, champion_score,
                                    margin, snapshot_id, store_uri, reason)
            VALUES (1, now() - interval '100 minutes', 'first', true, 'm-20240102-glove-wbce-full-7f3a', 11, NULL,
                    'm-20240102-glove-wbce-full-7f3a', 'example_f1', 0.5487, NULL, 0.005, 1, 's3://patentml/models',
                    'no champion yet'),
                   (2, now() - interval '50 minutes', 'keep', false, NULL, 13, 'm-20240102-glove-wbce-full-7f3a',
                    'm-20240102-glove-wbce-full-7f3a', 'example_f1', 0.4388, 0.5487, 0.005, 1, 's3://patentml/models',
                    :reason)
        """), {"reason": "challenger tfidf-full 0.4388 < champion 0.5487 + 0.005 " + EVIL})
        for table, key in (("ingest_batches", "batch_id"), ("dataset_snapshots", "snapshot_id"), ("runs", "run_id"),
                           ("promotions", "promotion_id")):
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', '{key}'), 100)"))
    return {"champion": "m-20240102-glove-wbce-full-7f3a"}


def train_and_promote(engine: Any, settings: Any, seaweed: Any, workdir: Path) -> dict[str, Any]:
    """Real runs on a new snapshot (TF-IDF and two tiny GloVe CNNs with epochs), promoted into a real S3 store:
    the weaker first, then the better one, so the champion has a history and a predecessor."""
    from patentml.db.results import run_scores
    from patentml.evaluate import evaluate_run
    from patentml.ingest import ingest
    from patentml.promote import promote
    from patentml.splits import rebuild
    from patentml.train import train

    ingest(engine, [write_jsonl(workdir / "corpus.jsonl", make_patents(200, FIRST_FIVE, 8_000_000, seed=1))])
    snapshot = rebuild(engine, settings.label_scheme).snapshot_id
    runs = [train("tfidf-full", settings, engine=engine)]
    for variant in ("glove-wbce-full", "glove-bce-full"):
        runs.append(train(variant, settings, epochs=4, batch_size=16, overrides=GLOVE_OVERRIDES, engine=engine))
    for run in runs:
        evaluate_run(engine, run, settings)
    bucket = seaweed.create_bucket("ui-" + uuid.uuid4().hex[:8])
    store = settings.replace(**seaweed.settings_overrides(f"s3://{bucket}/models"))
    with engine.connect() as conn:
        ranked = [r["run_id"] for r in run_scores(conn, runs)]
    first = promote(store, [ranked[-1]], engine=engine)
    second = promote(store, [ranked[0]], margin=0.0, engine=engine)
    assert (first["action"], second["action"]) == ("first", "promote"), (first["reason"], second["reason"])
    return {"snapshot": snapshot, "runs": runs, "ranked": ranked, "store": store, "bucket": bucket,
            "champion": second["champion_after"], "previous": first["champion_after"]}


def write_users(home: Path) -> dict[str, str]:
    """The test users of ``write_passwords`` plus :data:`NOBODY`, who has no role."""
    env = write_passwords(home)
    path = Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    path.write_text(json.dumps({**json.loads(path.read_text()), NOBODY[0]: NOBODY[1]}))
    env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] += f",{NOBODY[0]}:"
    return env


@dataclass
class Site:
    api: ApiServer
    metadata: str
    db_url: str
    real: dict[str, Any]

    @property
    def base(self) -> str:
        return self.api.base

    def token(self, user: str = "viewer") -> str:
        if user == NOBODY[0]:
            status, body = http("POST", self.base + "/auth/token", body={"username": NOBODY[0], "password": NOBODY[1]})
            assert status in (200, 201), body
            return json.loads(body)["access_token"]
        return self.api.token(user)


@pytest.fixture(scope="module")
def site(pg_admin_url: str, db_url: str, engine: Any, settings: Any, seaweed: Any,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One api-server for the module: metadata in its own database, PatentML data via the patentml_db Connection
    (in the metadata DB, as the compose init service creates it), the model store via patentml_s3."""
    insert_rows(engine)
    started = time.monotonic()
    real = train_and_promote(engine, settings, seaweed, tmp_path_factory.mktemp("corpus"))
    print(f"\ntrain + evaluate + promote: {time.monotonic() - started:.1f} s")
    home = tmp_path_factory.mktemp("airflow-ui")
    metadata = metadata_database(pg_admin_url, "ui")
    s3 = json.loads(seaweed.airflow_connection())
    s3["extra"]["store_uri"] = real["store"].store_uri
    env = airflow_env(home, metadata, {**write_users(home), "AIRFLOW_CONN_PATENTML_S3": json.dumps(s3),
                                       "PATENTML_HOME": str(home / "patentml"), "PATENTML_DEVICE": "cpu"})
    started = time.monotonic()
    run_airflow(["connections", "add", "patentml_db", "--conn-json", connection_json(db_url)], env)
    run_airflow(["dags", "reserialize"], env, timeout=180)  # the DAGs, for the trigger-form test
    print(f"connection + dags reserialize: {time.monotonic() - started:.1f} s")
    api = ApiServer(env, home / "logs")
    print(f"api-server ready in {api.startup_seconds:.1f} s on port {api.port}")
    try:
        yield Site(api, metadata, db_url, real)
    finally:
        api.stop()
        drop_metadata_database(pg_admin_url, metadata)


def post_form(url: str, fields: dict[str, str], headers: dict[str, str]) -> tuple[int, str]:
    """A form post as a browser sends it; HTTP errors are returned, not raised."""
    request = urllib.request.Request(url, data=urllib.parse.urlencode(fields).encode(), method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded", **headers})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def browser_headers(site: Site, user: str = "viewer", **extra: str) -> dict[str, str]:
    return {"Cookie": f"_token={site.token(user)}", "Origin": site.base, **extra}


def figure(page: str, chart_id: str) -> str:
    match = re.search(rf'<figure class="chart" id="{chart_id}">(.*?)</figure>', page, re.S)
    assert match, f"no chart {chart_id} on the page"
    return match.group(1)


def summary(site: Site, query: str = "") -> dict[str, Any]:
    status, body = http("GET", site.base + "/patentml/api/summary" + query, token=site.token())
    assert status == 200, body[:500]
    return json.loads(body)


# -- access ------------------------------------------------------------------------------------------
def test_page_requires_a_logged_in_user(site: Site) -> None:
    for path in ("/patentml/", "/patentml/api/summary"):
        status, body = http("GET", site.base + path)
        assert status == 401 and "Not authenticated" in body, path
    status, _ = http("GET", site.base + "/patentml/", token="not-a-jwt")
    assert status in (401, 403)
    status, _ = post_form(site.base + "/patentml/suggest", {"abstract": ABSTRACT}, {"Origin": site.base})
    assert status == 401


def test_permissions_come_from_the_auth_manager(site: Site) -> None:
    token = site.token(NOBODY[0])  # logged in, but granted nothing
    status, _ = http("GET", site.base + "/api/v2/dags", token=token)
    assert status == 403  # Airflow's own API agrees: no permissions
    status, page = http("GET", site.base + "/patentml/", token=token)
    assert status == 403 and "may not read the PatentML page" in page and "leaderboard" not in page
    status, body = http("GET", site.base + "/patentml/api/summary", token=token)
    assert status == 403 and "PatentML" in json.loads(body)["detail"]
    status, page = post_form(site.base + "/patentml/suggest", {"abstract": ABSTRACT},
                             {"Cookie": f"_token={token}", "Origin": site.base})
    assert status == 403 and "suggestion box" in page and 'id="answer"' not in page
    status, _ = http("GET", site.base + "/patentml/", token=site.token("viewer"))
    assert status == 200


# -- the page's data ---------------------------------------------------------------------------------
def test_page_shows_real_rows_escaped(site: Site) -> None:
    status, page = http("GET", site.base + "/patentml/", token=site.token("viewer"))
    assert status == 200, page[:500]
    assert f"Leaderboard: snapshot {site.real['snapshot']}" in page and "?snapshot=1&amp;" in page
    for variant in ("tfidf-full", "glove-wbce-full", "glove-bce-full"):
        assert variant in page
    # the failed run is listed apart, with its error; the batches, promotions and champion
    assert 'id="unfinished"' in page and "bert-bce-full" in page and "CUDA out of memory" in page
    assert 'id="champion"' in page and site.real["champion"] in page
    assert "/data/ipg240102.zip" in page and "7,412" in page and ">96<" in page and "empty abstract" in page
    assert "no champion yet" in page and "keep" in page and "signed in as viewer" in page
    # nothing from the database reaches the HTML unescaped (the page's one script is its own)
    assert EVIL not in page and page.count("<script") == 1
    assert page.count(ESCAPED) >= 4  # batch source, reject reason, run error, promotion reason

    status, old = http("GET", site.base + "/patentml/?snapshot=1", token=site.token("viewer"))
    assert status == 200 and "Leaderboard: snapshot 1" in old
    board = old[old.index('id="leaderboard"'):old.index("</table>", old.index('id="leaderboard"'))]
    for expected in ("glove-wbce-full", "tfidf-full", "0.549", "0.813", "0.845", "58.5 min", "1.6 min"):
        assert expected in board, expected
    assert ">0.401<" not in board  # run 11's F1 under the 0.5 rule, which is not its score


def test_leaderboard_ranks_each_snapshot_by_the_runs_own_score(site: Site, engine: Any) -> None:
    from patentml.db.results import run_scores

    data = summary(site)
    with engine.connect() as conn:
        expected = run_scores(conn, snapshot_id=site.real["snapshot"])
    assert [r["run_id"] for r in data["leaderboard"]] == [r["run_id"] for r in expected] == site.real["ranked"]
    assert [r["f1"] for r in data["leaderboard"]] == pytest.approx([r["f1"] for r in expected])
    assert [r["rank"] for r in data["leaderboard"]] == [1, 2, 3]
    assert [r["run_id"] for r in data["leaderboard"] if r["champion"]] == [site.real["ranked"][0]]
    assert data["snapshot_id"] == site.real["snapshot"]
    assert [s["snapshot_id"] for s in data["snapshots"]] == [site.real["snapshot"], 1]
    assert 12 in [r["run_id"] for r in data["unfinished"]] and data["unfinished"][0]["status"] == "failed"
    # the old snapshot: run 11 first under its tuned rule (0.5487); under the paper's 0.5 rule (0.4011) it would be last
    old = summary(site, "?snapshot=1")
    assert [(r["run_id"], r["rule"]) for r in old["leaderboard"]] == [(11, "tuned"), (13, "t0.5")]
    assert old["leaderboard"][0]["f1"] == pytest.approx(0.5487)
    status, _ = http("GET", site.base + "/patentml/api/summary?limit=100000", token=site.token())
    assert status == 422  # bounded


def test_the_page_reads_its_data_in_one_statement(site: Site, engine: Any) -> None:
    from sqlalchemy import event

    from patentml_airflow.ui import collect

    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        data = collect(engine)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(statements) == 1, statements
    assert len(data["leaderboard"]) == 3 and data["champion"]["model_id"] == site.real["champion"]


def test_cookie_session_and_json_summary(site: Site) -> None:
    token = site.token("admin")
    status, page = http("GET", site.base + "/patentml/", cookie=f"_token={token}")
    assert status == 200 and "signed in as admin" in page
    data = summary(site, "?limit=2")
    assert [r["run_id"] for r in data["leaderboard"]] == site.real["ranked"][:2]
    assert data["champion"]["model_id"] == site.real["champion"]
    assert data["champion"]["metrics"]["f1"] == pytest.approx(data["leaderboard"][0]["f1"])
    assert data["batches"][1]["batch_id"] == 2 and data["batches"][1]["n_rejected"] == 1
    assert data["corpus"]["rejected"] == 97


# -- charts ------------------------------------------------------------------------------------------
def test_charts_are_drawn_from_the_rows(site: Site, engine: Any) -> None:
    from patentml.db.results import section_scores

    status, page = http("GET", site.base + "/patentml/", token=site.token("viewer"))
    assert status == 200
    champion_run, *challengers = site.real["ranked"]
    with engine.connect() as conn:
        epochs = [dict(r._mapping) for r in conn.execute(text(
            "SELECT run_id, epoch, train_loss, valid_f1 FROM run_epochs WHERE run_id = ANY(:r) ORDER BY run_id, epoch"),
            {"r": site.real["runs"]})]
        sections = {r: section_scores(conn, r) for r in (champion_run, challengers[0])}
        decisions = conn.execute(text("SELECT count(*) FROM promotions WHERE champion_after IS NOT NULL AND "
                                      "CASE WHEN promoted THEN challenger_score ELSE champion_score END IS NOT NULL"
                                      )).scalar()
    assert [e["epoch"] for e in epochs if e["run_id"] in site.real["runs"][1:]] == [1, 2, 3, 4] * 2  # the CNNs
    curves = figure(page, "curve-valid_f1")
    assert 'role="img"' in curves and "<desc" in curves and ">epoch<" in curves and "validation example F1" in curves
    assert curves.count("<circle") == len([e for e in epochs if e["valid_f1"] is not None]) > 0
    one = epochs[1]
    assert f"epoch {one['epoch']}: {one['valid_f1']:.4f}" in curves
    assert figure(page, "curve-train_loss").count("<circle") == len([e for e in epochs if e["train_loss"] is not None])
    bars = figure(page, "sections-chart")
    assert bars.count("<rect") == sum(len(v) for v in sections.values())
    section = sections[champion_run][0]
    assert f"section {section['section']}: F1 {section['f1']:.3f}" in bars
    history = figure(page, "history-chart")
    assert history.count("<circle") == decisions == 4 and history.count('class="hollow"') == 1


# -- the suggestion box ------------------------------------------------------------------------------
def suggestions(page: str) -> list[tuple[str, str, bool]]:
    table = page[page.index('id="suggestions"'):page.index("</table>", page.index('id="suggestions"'))]
    rows = re.findall(r"<td><b>([A-HY]\d\d[A-Z])</b></td><td class=\"n\">([0-9.]+)</td>.*?<td>(.*?)</td>", table, re.S)
    return [(label, score, '"ok"' in decided) for label, score, decided in rows]


def test_the_champion_answers_a_pasted_abstract(site: Site) -> None:
    from patentml.predict import Predictor
    from patentml_airflow.ui.suggest import takes_explain

    expected = Predictor.open(site.real["store"]).predict([ABSTRACT], top_k=5)[0]
    status, page = post_form(site.base + "/patentml/suggest", {"abstract": ABSTRACT}, browser_headers(site))
    assert status == 200, page[:800]
    assert f"Suggestions of <b>{site.real['champion']}</b>" in page
    assert suggestions(page) == [(label, f"{score:.3f}", label in expected["labels"])
                                 for label, score in expected["scores"].items()]
    assert suggestions(page)[0][0] == "H04L"  # the network words of the abstract
    if takes_explain(Predictor):  # once Predictor explains, the page shows why for each label
        why = re.search(r"<td><b>H04L</b></td>(.*?)</tr>", page, re.S).group(1).rsplit("<td>", 1)[1]
        assert why.strip() not in ("", "–") and "gives no explanations" not in page
    else:
        assert "This model version gives no explanations." in page
    assert ABSTRACT.split(";")[0] in page  # the box keeps the text
    # a bearer token (no browser: nothing sent on its own) needs no Origin
    status, _ = post_form(site.base + "/patentml/suggest", {"abstract": ABSTRACT},
                          {"Authorization": f"Bearer {site.token()}"})
    assert status == 200
    # a hostile text is shown back escaped
    status, page = post_form(site.base + "/patentml/suggest", {"abstract": ABSTRACT + EVIL}, browser_headers(site))
    assert status == 200 and EVIL not in page and ESCAPED in page


def test_the_suggestion_box_refuses_forged_and_bad_posts(site: Site) -> None:
    url = site.base + "/patentml/suggest"
    cookie = {"Cookie": f"_token={site.token()}"}
    for headers in ({**cookie}, {**cookie, "Origin": "https://evil.example"},
                    {**cookie, "Referer": "https://evil.example/page"},
                    {**cookie, "Origin": site.base, "Sec-Fetch-Site": "cross-site"}):
        status, page = post_form(url, {"abstract": ABSTRACT}, headers)
        assert status == 403 and "cross-site request refused" in page and 'id="answer"' not in page, headers
    status, page = post_form(url, {"abstract": "   "}, browser_headers(site))
    assert status == 422 and "Paste an abstract first" in page
    from patentml_airflow.ui.suggest import MAX_CHARS

    status, page = post_form(url, {"abstract": "word " * (MAX_CHARS // 5 + 1)}, browser_headers(site))
    assert status == 413 and f"longer than {MAX_CHARS:,} characters" in page
    status, page = post_form(url, {"abstract": "!!! ??? ..."}, browser_headers(site))
    assert status == 422 and "no words" in page


# -- errors ------------------------------------------------------------------------------------------
def test_the_error_page_names_no_database_host_or_user(site: Site) -> None:
    import psycopg2

    secret_user = "ui_secret_user_4711"
    socket_dir = urllib.parse.parse_qs(urllib.parse.urlsplit(site.db_url).query).get("host", ["127.0.0.1"])[0]

    def set_login(login: str | None) -> None:
        conn = psycopg2.connect(site.metadata)
        try:
            with conn, conn.cursor() as cur:
                cur.execute("UPDATE connection SET login = %s WHERE conn_id = 'patentml_db'", (login,))
                assert cur.rowcount == 1
        finally:
            conn.close()

    set_login(secret_user)
    try:
        status, page = http("GET", site.base + "/patentml/", token=site.token())
        status_json, body = http("GET", site.base + "/patentml/api/summary", token=site.token())
    finally:
        set_login(urllib.parse.urlsplit(site.db_url).username or None)
    assert status == 503 and status_json == 503
    for shown in (page, body):
        assert secret_user not in shown and socket_dir not in shown and ".s.PGSQL" not in shown
    assert "cannot be reached or refused the login" in page
    ref = re.search(r"reference\s+<code>([0-9a-f]{8})</code>", page).group(1)
    log = site.api.component.tail(200_000)
    assert f"[{ref}]" in log and secret_user in log  # the details are in the operator's log
    status, _ = http("GET", site.base + "/patentml/", token=site.token())
    assert status == 200  # the Connection restored, the page reads again


# -- the plugin in Airflow ---------------------------------------------------------------------------
def test_plugin_is_registered_with_a_nav_entry(site: Site) -> None:
    status, body = http("GET", site.base + "/api/v2/plugins", token=site.token("admin"))
    assert status == 200, body[:300]
    (plugin,) = [p for p in json.loads(body)["plugins"] if p["name"] == "patentml"]
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/patentml"
    (view,) = plugin["external_views"]
    assert (view["url_route"], view["href"], view["destination"]) == ("patentml", "/patentml/", "nav")
    for path in ("/api/v2/importErrors", "/api/v2/plugins/importErrors"):  # DAG files, plugin files
        status, body = http("GET", site.base + path, token=site.token("admin"))
        assert status == 200 and json.loads(body)["total_entries"] == 0, (path, body[:500])


def test_manual_trigger_refuses_bad_params_with_a_clear_message(site: Site) -> None:
    token = site.token("admin")
    url = site.base + "/api/v2/dags/patent_retrain/dagRuns"
    status, body = http("POST", url, token=token, body={"logical_date": None, "conf": {"alpha": -1}})
    assert status == 400, body[:500]
    assert "Invalid input for param alpha" in body and "minimum" in body
    status, body = http("POST", url, token=token, body={"logical_date": None, "conf": {"encoders": ["gpt"]}})
    assert status == 400 and "Invalid input for param encoders" in body
    status, body = http(
        "POST", url, token=token,
        body={"logical_date": None, "conf": {"variants": ["tfidf-full"], "epochs": 2, "model_overrides": {"hidden": 8}}},
    )
    assert status == 200, body[:500]
    assert json.loads(body)["conf"]["variants"] == ["tfidf-full"]


# -- in headless Chromium ----------------------------------------------------------------------------
IFRAME_ROWS = """(() => {
  const frame = document.querySelector('iframe');
  if (!frame || !frame.contentDocument) return null;
  const doc = frame.contentDocument, table = doc.querySelector('#leaderboard');
  if (!table) return null;
  const text = id => (doc.querySelector(id) || {}).innerText || null;
  return {src: frame.getAttribute('src'), title: document.title, nav: document.body.innerText.includes('PatentML'),
          leaderboard: text('#leaderboard'), champion: text('#champion'), unfinished: text('#unfinished'),
          batches: text('#batches'), promotions: text('#promotions'), charts: doc.querySelectorAll('svg.chart').length};
})()"""


def shots_dir(tmp_path: Path) -> Path:
    """Where screenshots go: ``PATENTML_SCREENSHOTS`` when set (kept for people to look at), else the test's tmp."""
    wanted = os.environ.get("PATENTML_SCREENSHOTS")
    folder = Path(wanted) if wanted else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save(folder: Path, name: str, png: bytes) -> Path:
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, name
    path = folder / name
    path.write_bytes(png)
    print(f"screenshot {path} ({len(png):,} bytes)")
    return path


@system.needs("chromium")
def test_page_in_chromium_with_screenshots(site: Site, tmp_path: Path) -> None:
    from tests.chromium import Chromium

    folder = shots_dir(tmp_path)
    browser = Chromium(shutil.which("chromium") or "chromium")
    try:
        browser.call("Network.enable")
        browser.call("Network.setCookie", name="_token", value=site.token("viewer"), url=site.base + "/",
                     httpOnly=True)
        browser.call("Page.enable")
        # inside the Airflow UI: the nav entry's iframe
        browser.call("Page.navigate", url=site.base + "/plugin/patentml")
        found = browser.wait_for(IFRAME_ROWS, what="the PatentML iframe with the leaderboard in /plugin/patentml")
        time.sleep(1.0)  # let the React shell finish painting before the screenshot
        save(folder, "patentml-in-airflow-ui.png", browser.screenshot())
        assert found["src"] == "/patentml/" and found["nav"] and found["charts"] >= 4
        assert all(v in found["leaderboard"] for v in ("tfidf-full", "glove-wbce-full", "glove-bce-full"))
        assert site.real["champion"] in found["champion"] and "bert-bce-full" in found["unfinished"]
        assert "/data/ipg240102.zip" in found["batches"] and EVIL in found["batches"]  # text, not executed
        # the page itself: all of it, the charts in light and dark mode
        browser.open(site.base + "/patentml/")
        save(folder, "patentml-page.png", browser.screenshot(full=True))
        save(folder, "patentml-charts.png", browser.screenshot("#charts"))
        browser.dark(True)
        browser.open(site.base + "/patentml/")
        background = browser.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(21, 24, 28)", background
        save(folder, "patentml-charts-dark.png", browser.screenshot("#charts"))
        browser.dark(False)
        # the paste box: typed and sent by the browser itself (same-origin form post)
        browser.open(site.base + "/patentml/")
        browser.evaluate(f"document.getElementById('abstract').value = {json.dumps(ABSTRACT)};"
                         "document.getElementById('suggest-form').submit()")
        answer = browser.wait_for("(document.querySelector('#answer') || {}).innerText", what="the suggestions")
        save(folder, "patentml-suggestions.png", browser.screenshot(full=True))
    finally:
        browser.close()
    assert "H04L" in answer and site.real["champion"] in answer


def test_a_new_champion_is_picked_up_without_a_restart(site: Site) -> None:
    """Last in the module: it moves the store's pointer back to the previous champion."""
    from patentml.promote import rollback

    headers = browser_headers(site)
    for _ in range(2):
        status, page = post_form(site.base + "/patentml/suggest", {"abstract": ABSTRACT}, headers)
        assert status == 200 and f"Suggestions of <b>{site.real['champion']}</b>" in page
    rollback(site.real["store"])
    status, page = post_form(site.base + "/patentml/suggest", {"abstract": ABSTRACT}, headers)
    assert status == 200 and f"Suggestions of <b>{site.real['previous']}</b>" in page
    log = site.api.component.tail(500_000)
    # loaded once per model id, however many suggestions it gave
    assert log.count(f"loaded champion {site.real['champion']}") == 1
    assert log.count(f"loaded champion {site.real['previous']}") == 1
