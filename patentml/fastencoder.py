"""Fast CPU inference of BERT-family sentence encoders: ONNX Runtime, fp32 or dynamic int8, length-bucketed batches."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from patentml.exceptions import ConfigError, DependencyError, ModelError
from patentml.sentence import pooling_mode, vector_key
from patentml.settings import ENCODER_RUNTIMES as RUNTIMES

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int8")
#: Bumped when the exported graph changes (inputs, outputs, opset): old cache folders are then ignored.
EXPORT_VERSION = 1
OPSET = 17
ONNX_FILE = "model.onnx"
META_FILE = "meta.json"
#: Texts tokenised and sorted by length together: bounds the token lists held at once; within a chunk
#: the batches are as well bucketed as over the whole input.
CHUNK = 4096


@dataclass(frozen=True)
class Int8Recipe:
    """How ``quantize_dynamic`` turns the fp32 graph into int8 (its fields name the cached file)."""

    #: One scale per output channel of each weight instead of one per matrix: measured on 200 real
    #: abstracts, cosine to fp32 mean 0.992 (min 0.986) against 0.943 (min 0.903) per tensor.
    per_channel: bool = True
    #: MatMul nodes whose name matches this regex stay fp32. The feed-forward output projections take
    #: GELU outputs with outliers; keeping them fp32 lifts the cosine to 0.996 (min 0.992).
    exclude: str = ""
    #: Fuse attention, LayerNorm and GELU with ORT's transformer optimizer before quantizing.
    fuse: bool = False

    @property
    def tag(self) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]
        return f"int8-{'pc' if self.per_channel else 'pt'}{'-fused' if self.fuse else ''}-{digest}"


#: The feed-forward output projections of every layer (not the attention output, ``attention/output/dense``).
FFN_OUTPUT = r"layer\.\d+/output/dense/"
DEFAULT_RECIPE = Int8Recipe()


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """(batch, dim) unit vectors from (batch, seq, dim) last-layer states and their (batch, seq) mask."""
    m = mask[..., None].astype(hidden.dtype)  # (batch, seq, 1)
    if mode == "cls":
        out = hidden[:, 0]
    elif mode == "max":
        out = np.where(m > 0, hidden, -np.inf).max(axis=1)
    else:
        n = np.maximum(m.sum(axis=1), 1.0)  # (batch, 1)
        out = (hidden * m).sum(axis=1) / (n if mode == "mean" else np.sqrt(n))
    out = out.astype(np.float32)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def length_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of similar token length (shortest first), so each pads to little."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad(ids: Sequence[Sequence[int]], pad_id: int) -> dict[str, np.ndarray]:
    """BERT inputs (batch, longest) for token id lists: ids, attention mask, token types (all zero)."""
    width = max(len(row) for row in ids)
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(mask)}


def input_names(tokenizer: Any) -> list[str]:
    """The BERT inputs this tokenizer feeds its model, in a fixed order (the exported graph's)."""
    return [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tokenizer.model_input_names]


def model_dir(source: str) -> Path:
    """The local folder of an encoder; the ONNX runtime exports from files, so a hub name must be local."""
    path = Path(source)
    if not path.is_dir():
        raise ConfigError(f"encoder {source!r} is not a local folder: the onnx runtime exports from a model "
                          "folder (PATENTML_BERT_MODEL=/path/to/model), or use runtime=torch")
    if not (path / "config.json").is_file():
        raise ConfigError(f"encoder folder {path} has no config.json")
    return path


@lru_cache(maxsize=16)
def _files_digest(folder: str, stamp: tuple[tuple[str, int, int], ...]) -> str:
    from patentml.artifact import file_sha256

    digest = hashlib.sha256()
    for name, _, _ in stamp:
        digest.update(f"{name}:{file_sha256(Path(folder) / name)}\n".encode())
    return digest.hexdigest()


def weights_digest(folder: Path) -> str:
    """SHA-256 over config.json and the weight files: names the exported graph in the cache.

    Memoised per (name, size, mtime) in this process, so a second encoder does not hash 90 MB again.
    """
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and (
        p.name == "config.json" or p.suffix in (".safetensors", ".bin")))
    stamp = tuple((n, (folder / n).stat().st_size, (folder / n).stat().st_mtime_ns) for n in names)
    return _files_digest(str(folder), stamp)


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    from patentml.artifact import library_versions

    versions = library_versions()
    for dist in ("onnx", "onnxruntime"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def export_onnx(folder: Path, dest: Path) -> dict[str, Any]:
    """Export the encoder's last hidden state to ``dest`` (ONNX, dynamic batch and sequence); returns meta.

    Eager attention and an example batch of two lengths with padding: with SDPA attention or an all-ones
    mask the trace drops the mask and the graph attends to padding (cosine 0.97 to torch).
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True, attn_implementation="eager").eval()

    class Hidden(torch.nn.Module):
        """Positional inputs in ``names`` order to the model's keywords; only the last hidden state out."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.inner(**dict(zip(names, inputs))).last_hidden_state  # (batch, seq, dim)

    names = input_names(tokenizer)
    example = tokenizer(["a short example", "a longer example sentence, so that the first row has padding"],
                        padding=True, return_tensors="pt")
    args = tuple(example.get(n, torch.zeros_like(example["input_ids"])) for n in names)
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about shape checks it freezes; the fp32 graph matches torch to 1e-5 at any shape.
        warnings.simplefilter("ignore")
        torch.onnx.export(Hidden(model), args, str(dest), input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes={n: {0: "batch", 1: "seq"} for n in [*names, "last_hidden_state"]},
                          opset_version=OPSET, dynamo=False)
    # The loaded model's config (with its dtype), from which the vectors' key is computed as SentenceEncoder's.
    return {"config": model.config.to_dict()}


def quantize(src: Path, dest: Path, recipe: Int8Recipe) -> None:
    """Dynamic int8 (weights int8, activations quantised per batch) of an fp32 graph into ``dest``."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = src
    if recipe.fuse:
        from onnxruntime.transformers import optimizer

        config = json.loads((src.parent / META_FILE).read_text())["config"]
        fused = optimizer.optimize_model(str(src), model_type="bert", num_heads=int(config["num_attention_heads"]),
                                         hidden_size=int(config["hidden_size"]), opt_level=0)
        source = dest.with_name("fused.onnx")
        fused.save_model_to_file(str(source))
    graph = onnx.load(str(source), load_external_data=False).graph
    exclude = [n.name for n in graph.node if n.op_type == "MatMul" and recipe.exclude
               and re.search(recipe.exclude, n.name)]
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)  # the quantizer logs a line per tensor on the root logger
    try:
        quantize_dynamic(str(source), str(dest), weight_type=QuantType.QInt8, per_channel=recipe.per_channel,
                         nodes_to_exclude=exclude, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        logging.disable(previous)
    if source != src:
        source.unlink()


def onnx_model(folder: Path, cache_dir: Path, precision: str, recipe: Int8Recipe) -> Path:
    """The cached ONNX folder (model.onnx + meta.json) of an encoder, exported or quantised on first use.

    Keyed by the hash of config.json and the weight files and the library versions; written to a temp
    folder and renamed into place, so a crash or a concurrent writer never leaves half a file.
    """
    from patentml.artifact import atomic_dir

    versions = _versions()
    digest = hashlib.sha256(json.dumps([weights_digest(folder), EXPORT_VERSION, OPSET, versions.get("torch"),
                                        versions.get("transformers")]).encode()).hexdigest()[:16]
    root = cache_dir / f"{folder.name}-{digest}"
    fp32 = root / "fp32"
    if not (fp32 / META_FILE).is_file():
        log.info("exporting %s to ONNX under %s", folder, fp32)
        with atomic_dir(fp32, exist_ok=True) as tmp:
            meta = export_onnx(folder, tmp / ONNX_FILE)
            meta.update({"source": str(folder), "versions": versions, "export_version": EXPORT_VERSION})
            (tmp / META_FILE).write_text(json.dumps(meta, sort_keys=True, default=str, indent=1))
    if precision == "fp32":
        return fp32
    target = root / f"{recipe.tag}-ort{versions.get('onnxruntime')}"
    if not (target / META_FILE).is_file():
        log.info("quantising %s to int8 (%s) under %s", folder, recipe, target)
        with atomic_dir(target, exist_ok=True) as tmp:
            quantize(fp32 / ONNX_FILE, tmp / ONNX_FILE, recipe)
            meta = json.loads((fp32 / META_FILE).read_text())
            meta["recipe"] = asdict(recipe)
            (tmp / META_FILE).write_text(json.dumps(meta, sort_keys=True, default=str, indent=1))
    return target


def ort_session(path: Path, threads: int, spinning: bool = True) -> Any:
    """An ONNX Runtime CPU session: ``threads`` intra-op threads, every graph optimisation."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise DependencyError("the onnx encoder runtime needs onnxruntime (pip install onnxruntime)") from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:
        # Idle threads sleep instead of spinning: cheaper when other processes share the cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf types
        raise ModelError(f"ONNX model {path} could not be loaded: {exc}") from exc


class FastEncoder:
    """SentenceEncoder's inference interface (``encode``, ``key``, ``dim``, ``tokenizer``, ``max_length``),
    faster on CPU: the model's own pooling, batches bucketed by token length and padded to their own
    longest row, on ONNX Runtime in fp32 or dynamic int8, or on torch in fp32.

    ``key`` names the vectors in caches: fp32 vectors of either runtime share SentenceEncoder's key
    (cosine 1.0000 to each other), int8 vectors carry the recipe's tag so they never mix with fp32.
    Inference only: fine-tuning trains SentenceEncoder's torch model.
    """

    def __init__(self, name_or_path: str | None, max_length: int, batch_size: int = 32, tag: str | None = None,
                 *, runtime: str = "onnx", precision: str = "int8", recipe: Int8Recipe = DEFAULT_RECIPE,
                 threads: int = 0, cache_dir: Path | None = None, spinning: bool = True) -> None:
        from patentml.embeddings import load_encoder, resolve_encoder

        if runtime not in RUNTIMES or precision not in PRECISIONS:
            raise ConfigError(f"encoder runtime/precision {runtime}/{precision}: runtime is one of "
                              f"{', '.join(RUNTIMES)}, precision one of {', '.join(PRECISIONS)}")
        if runtime == "torch" and precision != "fp32":
            raise ConfigError("the torch encoder runtime is fp32 only; int8 needs runtime=onnx")
        self.source = resolve_encoder(name_or_path)
        self.max_length, self.batch_size, self.tag = int(max_length), int(batch_size), tag
        self.runtime, self.precision, self.recipe = runtime, precision, recipe
        self.threads = threads or os.cpu_count() or 1
        local = Path(self.source)
        self.pooling = pooling_mode(local) if local.is_dir() else "mean"
        self._hidden: Callable[[dict[str, np.ndarray]], np.ndarray]
        if runtime == "torch":
            self.tokenizer, self.model = load_encoder(self.source)
            self.dim = int(self.model.config.hidden_size)
            self._key = vector_key(self.model.config.to_dict(), self.source, self.max_length, self.pooling, tag)
            self._hidden = self._torch_hidden
        else:
            from transformers import AutoTokenizer

            folder = model_dir(self.source)
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            if cache_dir is None:
                from patentml.settings import get_settings

                cache_dir = get_settings().cache_dir / "onnx"
            self.onnx_dir, self.session = self._open(folder, cache_dir, spinning)
            meta = json.loads((self.onnx_dir / META_FILE).read_text(encoding="utf-8"))
            self.dim = int(meta["config"]["hidden_size"])
            self._key = vector_key(meta["config"], self.source, self.max_length, self.pooling, tag)
            self._hidden = self._onnx_hidden
        self.names = input_names(self.tokenizer)
        self._tokenizer_lock = threading.Lock()

    def _open(self, folder: Path, cache_dir: Path, spinning: bool) -> tuple[Path, Any]:
        """The cached graph and its session; a cached graph that will not load is rebuilt once."""
        import shutil

        target = onnx_model(folder, cache_dir, self.precision, self.recipe)
        try:
            return target, ort_session(target / ONNX_FILE, self.threads, spinning)
        except ModelError as exc:
            log.warning("%s: exporting %s again", exc, folder)
            shutil.rmtree(target.parent)  # every graph of these weights: the fp32 one may be the broken one
            target = onnx_model(folder, cache_dir, self.precision, self.recipe)
            return target, ort_session(target / ONNX_FILE, self.threads, spinning)

    @property
    def key(self) -> str:
        return self._key if self.precision == "fp32" else f"{self._key}:{self.recipe.tag}"

    def _onnx_hidden(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(["last_hidden_state"], {n: batch[n] for n in self.names})[0]

    def _torch_hidden(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            inputs = {n: torch.from_numpy(batch[n]) for n in self.names}
            return self.model(**inputs).last_hidden_state.float().numpy()

    def batches(self, texts: Sequence[str]) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """(row indices, padded inputs) per batch, tokenised a chunk at a time and sorted by token length."""
        pad_id = int(self.tokenizer.pad_token_id or 0)
        for start in range(0, len(texts), CHUNK):
            with self._tokenizer_lock:  # fast tokenizers refuse concurrent calls (prediction's threads)
                ids = self.tokenizer(list(texts[start : start + CHUNK]), truncation=True,
                                     max_length=self.max_length)["input_ids"]
            for rows in length_batches([len(r) for r in ids], self.batch_size):
                yield start + rows, pad([ids[i] for i in rows], pad_id)

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors, rows in the order of ``texts``."""
        from patentml.progress import Progress

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        counter = Progress(len(texts), "encoding abstracts", "abstract", progress)
        try:
            for rows, batch in self.batches(texts):
                out[rows] = pool(self._hidden(batch), batch["attention_mask"], self.pooling)
                counter.update(len(rows))
        finally:
            counter.close()
        return out

    def save(self, folder: Path, weights: bool) -> None:
        """The tokenizer into ``folder`` (inference only: saving weights needs the trainable SentenceEncoder)."""
        if weights:
            raise ModelError("the fast encoder is for inference: save weights from the SentenceEncoder that trained them")
        self.tokenizer.save_pretrained(folder)
