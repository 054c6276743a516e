"""Artifact folders: checksummed manifest, atomic writes, safetensors arrays, JSON, a local download cache."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from patentml.exceptions import ArtifactError

if TYPE_CHECKING:
    import numpy as np

    from patentml.store import ModelStore

MANIFEST = "manifest.json"
#: Bumped when the manifest layout changes; readers refuse versions they do not know.
MANIFEST_FORMAT = "patentml-artifact"
MANIFEST_VERSION = 1
#: Distribution names per reported library (sklearn is published as scikit-learn).
_LIBRARIES = {
    "patentml": "patentml",
    "torch": "torch",
    "transformers": "transformers",
    "sklearn": "scikit-learn",
    "numpy": "numpy",
    "safetensors": "safetensors",
}
_CHUNK = 1 << 20


def library_versions() -> dict[str, str | None]:
    """Versions of Python and the ML libraries, from package metadata (nothing is imported); None if absent."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name, dist in _LIBRARIES.items():
        try:
            versions[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def file_sha256(path: Path | str) -> str:
    """Hex SHA-256 of a file, read in chunks (weights can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(directory: Path) -> list[str]:
    return sorted(
        p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST
    )


def write_manifest(directory: Path | str, meta: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``manifest.json`` listing every other file with its sha256 and size, plus ``meta``.

    ``meta`` carries what the caller knows (model id, run id, ...); ``libraries`` defaults to
    :func:`library_versions`. Call it last, after every other file is written.
    """
    directory = Path(directory)
    reserved = {"format", "format_version", "files"} & set(meta)
    if reserved:
        raise ArtifactError(f"manifest metadata may not set {', '.join(sorted(reserved))}: they are computed")
    files = {
        rel: {"sha256": file_sha256(directory / rel), "size": (directory / rel).stat().st_size}
        for rel in _files(directory)
    }
    if not files:
        raise ArtifactError(f"artifact folder {directory} holds no files to list in {MANIFEST}")
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "libraries": library_versions(),
        **dict(meta),
        "files": files,
    }
    save_json(directory / MANIFEST, manifest)
    return manifest


def artifact_member(directory: Path, relative: str, what: str = "manifest key") -> Path:
    """``directory/relative`` for a relative POSIX path that stays inside ``directory``, else ArtifactError.

    Names in a manifest or an ensemble come from a file that may have been tampered with: an
    absolute path, ``..``, a backslash or an empty segment would reach outside the artifact.
    """
    from pathlib import PurePosixPath

    rel = PurePosixPath(relative) if isinstance(relative, str) else None
    if (rel is None or not relative or "\\" in relative or rel.is_absolute()
            or any(part in ("", ".", "..") for part in relative.split("/"))):
        raise ArtifactError(f"{what} {relative!r} in {directory} is not a plain path inside the artifact folder")
    return directory.joinpath(*rel.parts)


def verify_artifact(directory: Path | str, expected_sha256: str | None = None) -> dict[str, Any]:
    """Check every file the manifest lists (present, same size, same sha256) and return the manifest.

    A file the manifest does not list is refused, as is a manifest key that leaves the folder:
    what is loaded is exactly what was checksummed. ``expected_sha256`` (the registry's or the
    champion pointer's) must then match the manifest file itself.
    """
    directory = Path(directory)
    if not (directory / MANIFEST).is_file():
        raise ArtifactError(
            f"{directory} has no {MANIFEST}: it is not a PatentML artifact or it was copied incompletely"
        )
    if expected_sha256 is not None and file_sha256(directory / MANIFEST) != expected_sha256:
        raise ArtifactError(
            f"{directory / MANIFEST} has sha256 {file_sha256(directory / MANIFEST)[:12]}..., expected "
            f"{expected_sha256[:12]}...: this is not the model that was registered or pointed to"
        )
    manifest = load_json(directory / MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ArtifactError(f"{directory / MANIFEST} is not a PatentML artifact manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > MANIFEST_VERSION:
        raise ArtifactError(
            f"{directory / MANIFEST} has format_version {version!r}; this PatentML reads up to "
            f"{MANIFEST_VERSION}: upgrade patentml"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{directory / MANIFEST} lists no files")
    for rel, expected in sorted(files.items()):
        path = artifact_member(directory, rel)
        if not isinstance(expected, dict):
            raise ArtifactError(f"{directory / MANIFEST}: the entry of {rel} is not an object")
        if not path.is_file():
            raise ArtifactError(f"artifact {directory} is missing {rel} (listed in {MANIFEST})")
        size = path.stat().st_size
        if size != expected.get("size"):
            raise ArtifactError(
                f"artifact file {rel} in {directory} has {size} bytes, the manifest says "
                f"{expected.get('size')}: it is truncated or changed; download the model again"
            )
        if file_sha256(path) != expected.get("sha256"):
            raise ArtifactError(
                f"artifact file {rel} in {directory} does not match its sha256 in {MANIFEST}: "
                "it is corrupted or changed; download the model again"
            )
    extra = sorted(set(_files(directory)) - set(files))
    if extra:
        raise ArtifactError(
            f"artifact {directory} holds {len(extra)} file(s) its {MANIFEST} does not list, e.g. {extra[0]}: "
            "refusing to load what was not checksummed"
        )
    return manifest


@contextlib.contextmanager
def atomic_dir(final_path: Path | str, *, exist_ok: bool = False) -> Iterator[Path]:
    """Yield an empty temp folder beside ``final_path``; rename it into place when the block succeeds.

    If the block raises, the temp folder is removed and ``final_path`` is untouched. If
    ``final_path`` appears meanwhile (another process), ``exist_ok=True`` keeps that one and drops
    ours; otherwise :class:`ArtifactError` is raised.
    """
    final = Path(final_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    # A sibling of the target is on the same file system, so the final rename is atomic.
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError as exc:
            if not final.exists():
                raise
            if not exist_ok:
                raise ArtifactError(f"{final} already exists: refusing to replace it") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[Path]:
    """A temp file name beside ``path``, moved over it with ``os.replace`` on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def save_arrays(
    path: Path | str, arrays: Mapping[str, "np.ndarray"], metadata: Mapping[str, str] | None = None
) -> None:
    """Write named numpy arrays as safetensors (no pickle); ``metadata`` is a str->str header."""
    from safetensors.numpy import save_file

    import numpy as np

    path = Path(path)
    # safetensors wants C-contiguous arrays; views (slices, transposes) are copied here.
    tensors = {name: np.ascontiguousarray(value) for name, value in arrays.items()}
    with _atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=dict(metadata) if metadata else None)


def load_arrays(path: Path | str) -> dict[str, "np.ndarray"]:
    """Read a safetensors file into numpy arrays; errors name the file."""
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"array file {path} is missing")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own SafetensorError and OSError variants
        raise ArtifactError(f"array file {path} is not a readable safetensors file: {exc}") from exc


def save_json(path: Path | str, obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON with sorted keys, atomically."""
    path = Path(path)
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    with _atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def load_json(path: Path | str) -> Any:
    """Read a JSON file; a missing or malformed file raises :class:`ArtifactError` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path} is missing") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from exc


def cached_model_dir(
    store: "ModelStore", model_id: str, cache_root: Path | str, *, verify: bool = False,
    area: str | None = None, expected_sha256: str | None = None,
) -> Path:
    """A verified local copy of ``area/model_id`` at ``cache_root/<model_id>``, downloaded at most once.

    The copy appears by atomic rename only after its manifest checks out, so a folder in the
    cache is complete; ``verify=True`` re-checks checksums on a cache hit as well. A candidate and
    the model promoted from it share an id and their bytes, so they share the cache entry;
    ``expected_sha256`` pins the manifest (a cache entry that does not match is fetched again).
    """
    from patentml.store import MODELS, check_name

    final = Path(cache_root) / check_name(model_id)
    if (final / MANIFEST).is_file():
        if expected_sha256 is None or file_sha256(final / MANIFEST) == expected_sha256:
            if verify:
                verify_artifact(final, expected_sha256)
            return final
        # A stale entry under the same id (the store's copy was replaced): fetch it again.
        doomed = final.with_name(f".{final.name}.stale-{os.getpid()}")
        os.rename(final, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    with atomic_dir(final, exist_ok=True) as tmp:  # exist_ok: a concurrent download may win the rename
        store.get_dir(model_id, tmp, area or MODELS)
        verify_artifact(tmp, expected_sha256)
    if not (final / MANIFEST).is_file():
        raise ArtifactError(f"cache folder {final} exists but is not an artifact: remove it and retry")
    return final
