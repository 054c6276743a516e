"""Model store (file:// and a real SeaweedFS S3) and artifact helpers: round trips, immutability, errors."""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path

import numpy as np
import pytest

from patentml.artifact import (
    MANIFEST,
    atomic_dir,
    cached_model_dir,
    library_versions,
    load_arrays,
    load_json,
    save_arrays,
    save_json,
    verify_artifact,
    write_manifest,
)
from patentml.exceptions import ArtifactError, StoreError
from patentml.settings import Settings
from patentml.store import FileModelStore, ModelStore, S3ModelStore, open_store, parse_store_uri
from tests.s3server import SeaweedS3


# -- fixtures ------------------------------------------------------------------------------------
def _bucket() -> str:
    return "t-" + uuid.uuid4().hex[:12]


def _s3_settings(server: SeaweedS3, tmp_path: Path, **changes: str) -> Settings:
    return Settings(home=tmp_path / "home", **{**server.settings_overrides(), **changes})


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ModelStore:
    if request.param == "file":
        return open_store(f"file://{tmp_path / 'store'}", settings=Settings(home=tmp_path / "home"))
    seaweed: SeaweedS3 = request.getfixturevalue("seaweed")
    bucket = seaweed.create_bucket(_bucket())
    return open_store(f"s3://{bucket}/patentml", settings=_s3_settings(seaweed, tmp_path))


def make_artifact(directory: Path, model_id: str = "m1", seed: int = 0) -> Path:
    """A small artifact with arrays, JSON, a nested folder and binary noise, plus its manifest."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    save_arrays(
        directory / "weights.safetensors",
        {
            "conv.weight": rng.standard_normal((8, 4, 3)).astype(np.float32),
            "head.bias": np.arange(5, dtype=np.int64),
        },
    )
    save_json(directory / "config.json", {"encoder": "glove", "filters": 512, "model_id": model_id})
    save_json(directory / "labels.json", ["A01B", "H04L", "G06F"])
    (directory / "tokenizer").mkdir(exist_ok=True)
    (directory / "tokenizer" / "vocab.txt").write_text("the\npatent\nclaim\n", encoding="utf-8")
    (directory / "noise.bin").write_bytes(rng.bytes(70_000))
    write_manifest(directory, {"model_id": model_id, "run_id": 7})
    return directory


def tree_bytes(directory: Path) -> dict[str, bytes]:
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in files}


# -- store: both backends -------------------------------------------------------------------------
def test_put_get_round_trip_is_byte_identical(store: ModelStore, tmp_path: Path) -> None:
    src = make_artifact(tmp_path / "src")
    stored = store.put_dir("m1", src)
    assert stored[-1] == MANIFEST  # uploaded last: its presence marks a complete upload
    out = store.get_dir("m1", tmp_path / "out")
    assert tree_bytes(out) == tree_bytes(src)
    manifest = verify_artifact(out)
    assert manifest["model_id"] == "m1" and manifest["run_id"] == 7
    assert set(manifest["files"]) == {
        "weights.safetensors", "config.json", "labels.json", "tokenizer/vocab.txt", "noise.bin"
    }
    arrays = load_arrays(out / "weights.safetensors")
    np.testing.assert_array_equal(arrays["head.bias"], np.arange(5))


def test_existing_model_id_is_never_overwritten(store: ModelStore, tmp_path: Path) -> None:
    src = make_artifact(tmp_path / "src")
    store.put_dir("m1", src)
    original = tree_bytes(store.get_dir("m1", tmp_path / "before"))
    other = make_artifact(tmp_path / "other", seed=1)
    with pytest.raises(StoreError, match="already exists.*never overwritten"):
        store.put_dir("m1", other)
    assert tree_bytes(store.get_dir("m1", tmp_path / "after")) == original


def test_racing_writer_cannot_overwrite(
    store: ModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even when the existence check is passed (a writer racing us), stored keys stay as they are."""
    store.put_dir("m1", make_artifact(tmp_path / "src"))
    original = tree_bytes(store.get_dir("m1", tmp_path / "before"))
    monkeypatch.setattr(store, "exists", lambda model_id: False)
    with pytest.raises(StoreError, match="already exists"):
        store.put_dir("m1", make_artifact(tmp_path / "other", seed=1))
    monkeypatch.undo()
    assert tree_bytes(store.get_dir("m1", tmp_path / "after")) == original
    assert store.list_models() == ["m1"]  # no temp folder or stray prefix left behind


def test_list_exists_delete(store: ModelStore, tmp_path: Path) -> None:
    assert store.list_models() == []
    assert not store.exists("b2")
    store.put_dir("b2", make_artifact(tmp_path / "b"))
    store.put_dir("a1", make_artifact(tmp_path / "a"))
    assert store.list_models() == ["a1", "b2"]
    assert store.exists("a1")
    store.delete_model("a1")
    assert store.list_models() == ["b2"] and not store.exists("a1")
    with pytest.raises(StoreError, match="not in"):
        store.get_dir("a1", tmp_path / "gone")


def test_pointer_set_get_previous(store: ModelStore, tmp_path: Path) -> None:
    assert store.get_pointer() is None
    assert store.pointer_info("champion") is None
    store.put_dir("m1", make_artifact(tmp_path / "1"))
    store.put_dir("m2", make_artifact(tmp_path / "2"))
    first = store.set_pointer("champion", "m1")
    assert first["sha256"] is None
    assert first["model_id"] == "m1" and first["previous"] is None and first["updated_at"]
    second = store.set_pointer("champion", "m2")
    assert store.get_pointer("champion") == "m2"
    info = store.pointer_info()
    assert info == second and info["previous"] == "m1"
    assert set(info) == {"model_id", "sha256", "previous", "updated_at"}
    assert store.set_pointer("champion", "m2")["previous"] == "m1"  # idempotent: history kept
    assert store.list_pointers() == {"champion": "m2"}
    with pytest.raises(StoreError, match="no complete upload of it in .*put_dir"):
        store.set_pointer("champion", "missing")
    with pytest.raises(StoreError, match="pointer.*champion"):
        store.delete_model("m2")
    assert store.get_pointer() == "m2"
    assert store.set_pointer("champion", "m1", sha256="ab" * 32)["sha256"] == "ab" * 32


def test_pointer_move_is_a_compare_and_swap(store: ModelStore, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A mover that read the pointer before another one moved it must not overwrite the newer pointer."""
    for name in ("m1", "m2", "m3"):
        store.put_dir(name, make_artifact(tmp_path / name))
    store.set_pointer("champion", "m1")
    key = "pointers/champion.json"
    stale = store.read_versioned(key)
    store.set_pointer("champion", "m2")  # the other promoter wins the race
    monkeypatch.setattr(store, "read_versioned", lambda k: stale)  # this one still sees m1
    with pytest.raises(StoreError, match="changed while it was being replaced"):
        store.set_pointer("champion", "m3")
    monkeypatch.undo()
    assert store.get_pointer() == "m2" and store.pointer_info()["previous"] == "m1"
    with pytest.raises(StoreError, match="changed while it was being replaced"):
        store.replace_text(key, "{}", None)  # None: only if absent, and it exists
    store.delete_text(key)
    store.replace_text(key, '{"model_id": "m3"}', None)
    assert store.get_pointer() == "m3"


def test_interrupted_s3_upload_is_uploaded_again_not_reused(seaweed: SeaweedS3, tmp_path: Path) -> None:
    """Objects of a model but no manifest (the upload died): put_dir replaces them with a complete upload."""
    bucket = seaweed.create_bucket(_bucket())
    store = open_store(f"s3://{bucket}/p", settings=_s3_settings(seaweed, tmp_path))
    src = make_artifact(tmp_path / "src")
    client = seaweed.client()
    # What a dead upload leaves: the first files, one of them cut short, and no manifest.
    client.put_object(Bucket=bucket, Key="p/models/m1/config.json", Body=b"{}")
    client.put_object(Bucket=bucket, Key="p/models/m1/noise.bin", Body=(src / "noise.bin").read_bytes()[:100])
    assert store.exists("m1") and not store.is_complete("m1")
    store.put_dir("m1", src)
    assert store.is_complete("m1")
    assert tree_bytes(store.get_dir("m1", tmp_path / "out")) == tree_bytes(src)
    with pytest.raises(StoreError, match="already exists"):  # a complete upload is never replaced
        store.put_dir("m1", src)


def test_documents(store: ModelStore) -> None:
    assert store.read_text("registry/decisions.json") is None
    store.write_text("registry/decisions.json", json.dumps({"n": 1}))
    store.write_text("registry/decisions.json", json.dumps({"n": 2}))
    assert json.loads(store.read_text("registry/decisions.json") or "") == {"n": 2}
    assert store.list_keys("registry") == ["registry/decisions.json"]
    with pytest.raises(StoreError, match="write-once"):
        store.write_text("models/m1/config.json", "{}")


@pytest.mark.parametrize("bad", ["../evil", "a/b", ".hidden", "", "x" * 200])
def test_unsafe_model_ids_are_refused(store: ModelStore, tmp_path: Path, bad: str) -> None:
    with pytest.raises(StoreError, match="invalid model id"):
        store.put_dir(bad, make_artifact(tmp_path / "src"))


def test_put_dir_needs_files(store: ModelStore, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="no files"):
        store.put_dir("m1", tmp_path / "empty")
    with pytest.raises(StoreError, match="does not exist"):
        store.put_dir("m1", tmp_path / "nope")
    assert not store.exists("m1")


# -- cache -------------------------------------------------------------------------------------------
def test_cache_downloads_once(store: ModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_artifact(tmp_path / "src")
    store.put_dir("m1", src)
    calls: list[str] = []
    real_get_dir = store.get_dir

    def counting_get_dir(model_id: str, dest: Path | str, area: str = "models") -> Path:
        calls.append(model_id)
        return real_get_dir(model_id, dest, area)

    monkeypatch.setattr(store, "get_dir", counting_get_dir)
    cache = tmp_path / "cache"
    first = cached_model_dir(store, "m1", cache)
    assert first == cache / "m1" and tree_bytes(first) == tree_bytes(src)
    assert calls == ["m1"]
    store.delete_model("m1")  # the store no longer has it: only the cache can answer now
    second = cached_model_dir(store, "m1", cache, verify=True)
    assert second == first and calls == ["m1"]
    assert sorted(p.name for p in cache.iterdir()) == ["m1"]  # no temp folders left


def test_cache_refuses_corrupted_download(store: ModelStore, tmp_path: Path) -> None:
    src = make_artifact(tmp_path / "src")
    data = bytearray((src / "noise.bin").read_bytes())
    data[100] ^= 0xFF
    (src / "noise.bin").write_bytes(bytes(data))  # manifest now disagrees with the file
    store.put_dir("bad", src)
    cache = tmp_path / "cache"
    with pytest.raises(ArtifactError, match="noise.bin"):
        cached_model_dir(store, "bad", cache)
    assert not (cache / "bad").exists() and list(cache.iterdir()) == []


# -- S3 specifics ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"s3_secret_access_key": "wrong-secret"}, "SignatureDoesNotMatch"),
        ({"s3_access_key_id": "nobody"}, "InvalidAccessKeyId"),
    ],
)
def test_s3_wrong_credentials_clear_message_and_nothing_written(
    seaweed: SeaweedS3, tmp_path: Path, changes: dict[str, str], code: str
) -> None:
    bucket = seaweed.create_bucket(_bucket())
    uri = f"s3://{bucket}/patentml"
    bad = open_store(uri, settings=_s3_settings(seaweed, tmp_path, **changes))
    src = make_artifact(tmp_path / "src")
    with pytest.raises(StoreError) as caught:
        bad.put_dir("m1", src)
    message = str(caught.value)
    assert "S3 rejected the credentials for endpoint " + seaweed.endpoint_url in message
    assert code in message
    assert "PATENTML_S3_ACCESS_KEY_ID / PATENTML_S3_SECRET_ACCESS_KEY" in message
    assert "patentml_s3 Airflow Connection" in message
    assert seaweed.secret_access_key not in message and "wrong-secret" not in message
    with pytest.raises(StoreError, match="rejected the credentials"):
        bad.get_pointer()
    with pytest.raises(StoreError, match="rejected the credentials"):
        bad.list_models()
    with pytest.raises(StoreError, match="rejected the credentials"):
        bad.write_text("notes/x.json", "{}")
    listing = seaweed.client().list_objects_v2(Bucket=bucket)
    assert listing.get("KeyCount", 0) == 0  # nothing was written


def test_s3_missing_bucket_message_and_create(seaweed: SeaweedS3, tmp_path: Path) -> None:
    settings = _s3_settings(seaweed, tmp_path)
    bucket = _bucket()
    store = open_store(f"s3://{bucket}/p", settings=settings)
    with pytest.raises(StoreError, match=f"bucket '{bucket}' does not exist.*create_bucket_if_missing"):
        store.put_dir("m1", make_artifact(tmp_path / "src"))
    with pytest.raises(StoreError, match="does not exist"):
        store.check()
    created = open_store(f"s3://{bucket}/p", settings=settings, create_bucket_if_missing=True)
    assert isinstance(created, S3ModelStore)
    assert created.ensure_bucket() is False  # already there now
    created.check()
    created.put_dir("m1", make_artifact(tmp_path / "src2"))
    assert created.list_models() == ["m1"]


def test_s3_unreachable_endpoint(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = Settings(
        home=tmp_path,
        s3_endpoint_url=f"http://127.0.0.1:{port}",
        s3_access_key_id="k",
        s3_secret_access_key="s",
    )
    store = open_store("s3://bucket/p", settings=settings)
    with pytest.raises(StoreError, match="cannot reach the S3 endpoint.*PATENTML_S3_ENDPOINT_URL"):
        store.exists("m1")


def test_s3_layout_under_prefix(seaweed: SeaweedS3, tmp_path: Path) -> None:
    """Keys are <prefix>/models/<id>/<file> and <prefix>/pointers/<name>.json: stable for operators."""
    bucket = seaweed.create_bucket(_bucket())
    store = open_store(f"s3://{bucket}/team/patentml", settings=_s3_settings(seaweed, tmp_path))
    store.put_dir("m1", make_artifact(tmp_path / "src"))
    store.set_pointer("champion", "m1")
    keys = sorted(item["Key"] for item in seaweed.client().list_objects_v2(Bucket=bucket)["Contents"])
    assert "team/patentml/models/m1/tokenizer/vocab.txt" in keys
    assert "team/patentml/pointers/champion.json" in keys
    assert all(key.startswith("team/patentml/") for key in keys)


# -- opening ---------------------------------------------------------------------------------------
def test_open_store_defaults_and_uris(tmp_path: Path) -> None:
    default = open_store(Settings(home=tmp_path))
    assert isinstance(default, FileModelStore) and default.root == (tmp_path / "models").resolve()
    assert parse_store_uri("s3://bkt/a/b/") == ("s3", "bkt", "a/b")
    assert parse_store_uri("file:///srv/models") == ("file", "/srv/models", "")
    for bad in ("s3:///nobucket", "gs://x/y", "file://"):
        with pytest.raises(StoreError):
            parse_store_uri(bad)


def test_file_store_leaves_no_temp_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileModelStore(tmp_path / "store")
    src = make_artifact(tmp_path / "src")

    def broken_copy(a: object, b: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("patentml.store.file.shutil.copyfile", broken_copy)
    with pytest.raises(StoreError, match="No space left"):
        store.put_dir("m1", src)
    assert not store.exists("m1")
    assert list((tmp_path / "store" / "models").iterdir()) == []


# -- artifact helpers ------------------------------------------------------------------------------
def test_verify_artifact_names_missing_file(tmp_path: Path) -> None:
    art = make_artifact(tmp_path / "a")
    (art / "config.json").unlink()
    with pytest.raises(ArtifactError, match="missing config.json"):
        verify_artifact(art)


def test_verify_artifact_names_corrupted_file(tmp_path: Path) -> None:
    art = make_artifact(tmp_path / "a")
    path = art / "weights.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one byte, same size: only the checksum can tell
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="weights.safetensors.*sha256"):
        verify_artifact(art)


def test_verify_artifact_refuses_unlisted_files_and_needs_manifest(tmp_path: Path) -> None:
    art = make_artifact(tmp_path / "a")
    assert verify_artifact(art)["model_id"] == "m1"
    (art / "tokenizer" / "extra.py").write_text("import os  # planted beside the checksummed files")
    with pytest.raises(ArtifactError, match=r"1 file\(s\) its manifest.json does not list, e.g. tokenizer/extra.py"):
        verify_artifact(art)
    (art / "tokenizer" / "extra.py").unlink()
    (art / MANIFEST).unlink()
    with pytest.raises(ArtifactError, match="no manifest.json"):
        verify_artifact(art)


@pytest.mark.parametrize("key", ["../outside.bin", "/etc/hostname", "tokenizer/../../outside.bin", "a\\..\\b", ""])
def test_manifest_keys_must_stay_inside_the_artifact(tmp_path: Path, key: str) -> None:
    art = make_artifact(tmp_path / "a")
    (tmp_path / "outside.bin").write_bytes(b"x")
    manifest = load_json(art / MANIFEST)
    manifest["files"][key] = {"sha256": "0" * 64, "size": 1}
    save_json(art / MANIFEST, manifest)
    with pytest.raises(ArtifactError, match="not a plain path inside the artifact folder"):
        verify_artifact(art)


def test_verify_artifact_pins_the_expected_manifest(tmp_path: Path) -> None:
    from patentml.artifact import file_sha256

    art = make_artifact(tmp_path / "a")
    sha = file_sha256(art / MANIFEST)
    assert verify_artifact(art, sha)["run_id"] == 7
    other = make_artifact(tmp_path / "b", seed=1)  # a consistent artifact, but another one
    with pytest.raises(ArtifactError, match="not the model that was registered or pointed to"):
        verify_artifact(other, sha)


def test_manifest_records_sizes_and_libraries(tmp_path: Path) -> None:
    art = make_artifact(tmp_path / "a")
    manifest = load_json(art / MANIFEST)
    assert manifest["files"]["noise.bin"]["size"] == 70_000
    assert len(manifest["files"]["noise.bin"]["sha256"]) == 64
    assert MANIFEST not in manifest["files"]
    versions = library_versions()
    assert {"python", "patentml", "torch", "transformers", "sklearn", "numpy", "safetensors"} <= set(versions)
    assert manifest["libraries"]["numpy"] == np.__version__
    with pytest.raises(ArtifactError, match="files"):
        write_manifest(art, {"files": {}})


def test_atomic_dir_leaves_nothing_when_block_raises(tmp_path: Path) -> None:
    final = tmp_path / "out" / "model"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "half.bin").write_bytes(b"x" * 10)
            raise RuntimeError("interrupted")
    assert not final.exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_atomic_dir_commits_and_respects_existing(tmp_path: Path) -> None:
    final = tmp_path / "model"
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (final / "a.txt").read_text() == "first"
    with pytest.raises(ArtifactError, match="already exists"):
        with atomic_dir(final) as tmp:
            (tmp / "a.txt").write_text("second")
    with atomic_dir(final, exist_ok=True) as tmp:
        (tmp / "a.txt").write_text("third")
    assert (final / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_arrays_and_json_round_trip(tmp_path: Path) -> None:
    matrix = np.arange(12, dtype=np.float16).reshape(3, 4)
    arrays = {"t": matrix.T, "ids": np.array([3, 1, 2], dtype=np.int32), "mask": np.array([True, False])}
    save_arrays(tmp_path / "a.safetensors", arrays, metadata={"kind": "test"})
    loaded = load_arrays(tmp_path / "a.safetensors")
    for name, value in arrays.items():
        np.testing.assert_array_equal(loaded[name], value)
        assert loaded[name].dtype == value.dtype
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ArtifactError, match="broken.safetensors"):
        load_arrays(tmp_path / "broken.safetensors")
    save_json(tmp_path / "d.json", {"b": 1, "a": "é"})
    assert load_json(tmp_path / "d.json") == {"a": "é", "b": 1}
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="bad.json"):
        load_json(tmp_path / "bad.json")


@pytest.mark.parametrize("folder", ["../elsewhere", "/tmp", "member_0/../../x", "a/b"])
def test_ensemble_members_must_be_folders_inside_the_artifact(tmp_path: Path, folder: str) -> None:
    from patentml.variants.ensemble import ENSEMBLE_FILE, Ensemble

    art = tmp_path / "ens"
    art.mkdir()
    (art / ENSEMBLE_FILE).write_text(json.dumps({"members": [{"folder": folder, "weight": 1.0, "run_id": 1}]}))
    with pytest.raises(ArtifactError, match="inside the artifact"):
        Ensemble(["A01B"])._load(art)
