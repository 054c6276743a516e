"""The PatentML page on a real api-server: login required, real rows from Postgres, escaped; shown inside
the Airflow UI in headless Chromium; a manual trigger with a bad Param is refused with a clear message."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
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

EVIL = '<script>alert("x")</script>'


def insert_rows(engine: Any) -> dict[str, Any]:
    """A small, realistic history: two ingest batches, three runs (one failed), a champion, two decisions."""
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
            INSERT INTO promotions (decided_at, action, promoted, challenger_model_id, challenger_run_id,
                                    champion_before, champion_after, metric, challenger_score, champion_score,
                                    margin, snapshot_id, store_uri, reason)
            VALUES (now() - interval '100 minutes', 'first', true, 'm-20240102-glove-wbce-full-7f3a', 11, NULL,
                    'm-20240102-glove-wbce-full-7f3a', 'example_f1', 0.5487, NULL, 0.005, 1, 's3://patentml/models',
                    'no champion yet'),
                   (now() - interval '50 minutes', 'keep', false, NULL, 13, 'm-20240102-glove-wbce-full-7f3a',
                    'm-20240102-glove-wbce-full-7f3a', 'example_f1', 0.4388, 0.5487, 0.005, 1, 's3://patentml/models',
                    :reason)
        """), {"reason": "challenger tfidf-full 0.4388 < champion 0.5487 + 0.005 " + EVIL})
    return {"champion": "m-20240102-glove-wbce-full-7f3a"}


@pytest.fixture(scope="module")
def server(pg_admin_url: str, db_url: str, engine: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """One api-server for the module: metadata in its own database, PatentML data via the patentml_db Connection."""
    insert_rows(engine)
    home = tmp_path_factory.mktemp("airflow-ui")
    metadata = metadata_database(pg_admin_url, "ui")
    env = airflow_env(home, metadata, write_passwords(home))
    started = time.monotonic()
    # The Connection lives in the metadata DB, as the compose init service creates it: the page
    # resolves it in the api-server (server context, metastore secrets backend).
    run_airflow(["connections", "add", "patentml_db", "--conn-json", connection_json(db_url)], env)
    run_airflow(["dags", "reserialize"], env, timeout=180)  # the DAGs, for the trigger-form test
    print(f"\nconnection + dags reserialize: {time.monotonic() - started:.1f} s")
    api = ApiServer(env, home / "logs")
    print(f"api-server ready in {api.startup_seconds:.1f} s on port {api.port}")
    try:
        yield api
    finally:
        api.stop()
        drop_metadata_database(pg_admin_url, metadata)


def test_page_requires_a_logged_in_user(server: ApiServer) -> None:
    for path in ("/patentml/", "/patentml/api/summary"):
        status, body = http("GET", server.base + path)
        assert status == 401 and "Not authenticated" in body, path
    status, _ = http("GET", server.base + "/patentml/", token="not-a-jwt")
    assert status in (401, 403)


def test_page_shows_real_rows_escaped(server: ApiServer) -> None:
    status, page = http("GET", server.base + "/patentml/", token=server.token("viewer"))
    assert status == 200, page[:500]
    # leaderboard: every run, each under its own rule (run 11: tuned, not the paper's 0.5), durations, the failure
    for expected in ("glove-wbce-full", "bert-bce-full", "tfidf-full", "0.549", "0.813", "0.845", "58.5 min",
                     "failed", "1.6 min"):
        assert expected in page, expected
    assert ">0.401<" not in page  # run 11's F1 under the 0.5 rule, which is not its score
    # champion, its sections under its own rule (tuned), promotion history, batches with rejects
    assert 'id="champion"' in page and "m-20240102-glove-wbce-full-7f3a" in page
    assert "0.647" in page and "0.626" in page and ">0.100<" not in page
    assert "no champion yet" in page and "keep" in page
    assert "/data/ipg240102.zip" in page and "7,412" in page and ">96<" in page and "empty abstract" in page
    assert "signed in as viewer" in page
    # nothing from the database reaches the HTML unescaped
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page


def test_cookie_session_and_json_summary(server: ApiServer) -> None:
    token = server.token("admin")
    status, page = http("GET", server.base + "/patentml/", cookie=f"_token={token}")
    assert status == 200 and "signed in as admin" in page
    status, body = http("GET", server.base + "/patentml/api/summary?limit=2", token=token)
    assert status == 200
    data = json.loads(body)
    assert [r["run_id"] for r in data["leaderboard"]] == [13, 12]
    assert data["champion"]["model_id"] == "m-20240102-glove-wbce-full-7f3a"
    assert data["champion"]["metrics"]["f1"] == pytest.approx(0.5487) and data["champion"]["metrics"]["rule"] == "tuned"
    assert [s["section"] for s in data["sections"]] == ["A", "H"]
    assert data["batches"][0]["n_rejected"] == 1 and data["batches"][1]["top_reason"] == "empty abstract"
    assert data["corpus"]["rejected"] == 97
    status, _ = http("GET", server.base + "/patentml/api/summary?limit=100000", token=token)
    assert status == 422  # bounded


def test_plugin_is_registered_with_a_nav_entry(server: ApiServer) -> None:
    status, body = http("GET", server.base + "/api/v2/plugins", token=server.token("admin"))
    assert status == 200, body[:300]
    (plugin,) = [p for p in json.loads(body)["plugins"] if p["name"] == "patentml"]
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/patentml"
    (view,) = plugin["external_views"]
    assert (view["url_route"], view["href"], view["destination"]) == ("patentml", "/patentml/", "nav")
    for path in ("/api/v2/importErrors", "/api/v2/plugins/importErrors"):  # DAG files, plugin files
        status, body = http("GET", server.base + path, token=server.token("admin"))
        assert status == 200 and json.loads(body)["total_entries"] == 0, (path, body[:500])


def test_manual_trigger_refuses_bad_params_with_a_clear_message(server: ApiServer) -> None:
    token = server.token("admin")
    url = server.base + "/api/v2/dags/patent_retrain/dagRuns"
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


# -- the page inside the Airflow UI, in headless Chromium ----------------------------------------
class Chromium:
    """Headless Chromium driven over the DevTools protocol: set the login cookie, load, read the DOM, screenshot."""

    def __init__(self, binary: str, width: int = 1400, height: int = 1000) -> None:
        from websockets.sync.client import connect

        # Profile and Chromium's own temp files (it also writes to $TMPDIR) in one folder, removed on close.
        self.base = tempfile.mkdtemp(prefix="patentml-chromium-")
        self.profile = os.path.join(self.base, "profile")
        self.process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            env={**os.environ, "TMPDIR": self.base}, start_new_session=True,
        )
        active = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (active.exists() and active.read_text().count("\n") >= 1):
            assert self.process.poll() is None and time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.1)
        port = int(active.read_text().splitlines()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            (page,) = [t for t in json.load(response) if t["type"] == "page"]
        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10))
        self._id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self._id:
                assert "error" not in message, message
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._stack.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # renderer/zygote children still writing
        for _ in range(10):
            shutil.rmtree(self.base, ignore_errors=True)
            if not os.path.exists(self.base):
                break
            time.sleep(0.2)


IFRAME_ROWS = """(() => {
  const frame = document.querySelector('iframe');
  if (!frame || !frame.contentDocument) return null;
  const doc = frame.contentDocument, table = doc.querySelector('#leaderboard');
  if (!table) return null;
  const text = id => (doc.querySelector(id) || {}).innerText || null;
  return {src: frame.getAttribute('src'), title: document.title, nav: document.body.innerText.includes('PatentML'),
          leaderboard: text('#leaderboard'), champion: text('#champion'), sections: text('#sections'),
          batches: text('#batches'), promotions: text('#promotions')};
})()"""


@system.needs("chromium")
def test_page_inside_the_airflow_ui_in_chromium(server: ApiServer, tmp_path: Path) -> None:
    browser = Chromium(shutil.which("chromium") or "chromium")
    started = time.monotonic()
    try:
        browser.call("Network.enable")
        browser.call("Network.setCookie", name="_token", value=server.token("viewer"), url=server.base + "/",
                     httpOnly=True)
        browser.call("Page.enable")
        browser.call("Page.navigate", url=server.base + "/plugin/patentml")
        found = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not found:
            found = browser.evaluate(IFRAME_ROWS)
            if not found:
                time.sleep(0.5)
        assert found, "the PatentML iframe with the leaderboard never appeared in /plugin/patentml:\n" + str(
            browser.evaluate("document.body ? document.body.innerText.slice(0, 2000) : ''"))
        time.sleep(1.0)  # let the React shell finish painting before the screenshot
        png = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    finally:
        browser.close()
    shot = tmp_path / "patentml-in-airflow-ui.png"
    shot.write_bytes(png)
    print(f"\nscreenshot {shot} ({len(png):,} bytes) in {time.monotonic() - started:.1f} s")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert found["src"] == "/patentml/" and found["nav"]
    assert "glove-wbce-full" in found["leaderboard"] and "tfidf-full" in found["leaderboard"]
    assert "m-20240102-glove-wbce-full-7f3a" in found["champion"]
    assert "0.647" in found["sections"] and "/data/ipg240102.zip" in found["batches"]
    assert EVIL in found["batches"]  # shown as text, not executed
    keep = os.environ.get("PATENTML_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
