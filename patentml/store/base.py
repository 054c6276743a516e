"""The model store's interface, layout and name rules; implementations in ``file.py`` and ``s3.py``."""

from __future__ import annotations

import datetime as dt
import json
import re
from abc import ABC, abstractmethod
from pathlib import Path, PurePosixPath
from typing import Any

from patentml.exceptions import StoreError

#: Layout under the store root (a folder, or ``bucket/prefix``): ``models/<model_id>/...`` holds
#: one promoted artifact per model id, never overwritten; ``candidates/<id>/...`` the artifact every
#: finished training run uploads (write-once too; promotion copies the winner into ``models/``);
#: ``checkpoints/<run_id>/...`` the resumable files of a run in progress (replaced every epoch,
#: removed when it succeeds); ``pointers/<name>.json`` names the champion.
MODELS = "models"
CANDIDATES = "candidates"
CHECKPOINTS = "checkpoints"
POINTERS = "pointers"
#: The write-once areas: folders of artifacts, each complete once its manifest is there.
AREAS = (MODELS, CANDIDATES)
#: Uploaded last, so an S3 listing that shows it belongs to a completely uploaded model.
MANIFEST = "manifest.json"
CHAMPION = "champion"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CREDENTIAL_CODES = frozenset(
    {
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "InvalidToken",
        "ExpiredToken",
        "InvalidSecurity",
        "AuthorizationHeaderMalformed",
    }
)
_OWN_BUCKET_CODES = ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")
_CREDENTIAL_HINT = (
    "check PATENTML_S3_ACCESS_KEY_ID / PATENTML_S3_SECRET_ACCESS_KEY or the patentml_s3 Airflow Connection"
)


def check_name(value: str, what: str = "model id") -> str:
    """Return ``value`` if it is a safe single path segment (letters, digits, ``._-``), else raise.

    Ids become folder names and S3 keys, so ``/``, ``..`` and leading dots are refused.
    """
    if not isinstance(value, str) or not _NAME.match(value) or value in (".", ".."):
        raise StoreError(
            f"invalid {what} {value!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def _check_key(key: str) -> str:
    """A relative document key such as ``registry/runs.json``: every segment a safe name."""
    parts = key.split("/")
    for part in parts:
        check_name(part, "document key segment")
    return "/".join(parts)


def _artifact_files(local_dir: Path) -> list[str]:
    """Relative POSIX paths of all files under ``local_dir``, the manifest last."""
    if not local_dir.is_dir():
        raise StoreError(f"artifact folder {local_dir} does not exist or is not a folder")
    files = sorted(p.relative_to(local_dir).as_posix() for p in local_dir.rglob("*") if p.is_file())
    if not files:
        raise StoreError(f"artifact folder {local_dir} holds no files: nothing to store")
    if MANIFEST in files:
        files.remove(MANIFEST)
        files.append(MANIFEST)
    return files


def check_area(area: str) -> str:
    if area not in AREAS:
        raise StoreError(f"unknown store area {area!r}: one of {', '.join(AREAS)}")
    return area


def _safe_target(dest_dir: Path, relative: str) -> Path:
    """``dest_dir/relative``, refusing names that would escape ``dest_dir`` (a hostile store)."""
    rel = PurePosixPath(relative)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise StoreError(f"refusing to download {relative!r}: the name escapes the destination folder")
    return dest_dir.joinpath(*rel.parts)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class ModelStore(ABC):
    """Where artifacts live. Model folders are write-once; pointers are small JSON docs replaced atomically.

    Concurrent promotions are serialized by the caller (a Postgres advisory lock); moving a pointer
    is also a compare-and-swap (:meth:`replace_text`), so a writer that read an old pointer cannot
    overwrite a newer one.
    """

    #: Canonical URI of the store (no secrets), e.g. ``file:///srv/models`` or ``s3://bucket/prefix``.
    uri: str

    # -- models ------------------------------------------------------------------------------
    @abstractmethod
    def put_dir(self, model_id: str, local_dir: Path | str, area: str = MODELS) -> list[str]:
        """Store every file under ``local_dir`` as ``area/model_id``, the manifest last; return the paths stored.

        Raises :class:`StoreError` if a complete upload of ``model_id`` exists: it is never overwritten.
        An interrupted upload (files but no manifest) is removed and uploaded again.
        """

    @abstractmethod
    def get_dir(self, model_id: str, dest_dir: Path | str, area: str = MODELS) -> Path:
        """Download ``area/model_id`` into ``dest_dir`` (created if missing) and return it."""

    @abstractmethod
    def exists(self, model_id: str, area: str = MODELS) -> bool:
        """True if any file is stored under ``model_id`` (even from an interrupted upload)."""

    @abstractmethod
    def is_complete(self, model_id: str, area: str = MODELS) -> bool:
        """True if the upload of ``model_id`` finished (its manifest, written last, is there)."""

    @abstractmethod
    def list_models(self, area: str = MODELS) -> list[str]:
        """Ids of the stored models (complete or not), sorted."""

    @abstractmethod
    def delete_model(self, model_id: str, area: str = MODELS) -> None:
        """Remove a model's files; meant for cleaning up a failed upload (pointed-to models are refused)."""

    # -- working files (checkpoints): replaced freely, outside the write-once areas -------------
    @abstractmethod
    def put_file(self, key: str, path: Path | str) -> None:
        """Upload one file to ``key`` (e.g. ``checkpoints/12/checkpoint.pt``), replacing what was there."""

    @abstractmethod
    def get_file(self, key: str, dest: Path | str) -> bool:
        """Download ``key`` to ``dest`` (atomically); False when there is no such key."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Remove every document below the folder ``prefix`` (e.g. a finished run's checkpoints)."""

    # -- small documents ---------------------------------------------------------------------
    @abstractmethod
    def read_text(self, key: str) -> str | None:
        """The UTF-8 document at ``key`` (relative to the store root, e.g. ``registry/x.json``) or None."""

    @abstractmethod
    def write_text(self, key: str, text: str) -> None:
        """Write (or replace) a small document atomically; keys under ``models/`` are refused."""

    @abstractmethod
    def read_versioned(self, key: str) -> tuple[str | None, str | None]:
        """(text, version) of a document, (None, None) when absent; the version feeds :meth:`replace_text`."""

    @abstractmethod
    def replace_text(self, key: str, text: str, version: str | None) -> None:
        """Write ``key`` only if it is still at ``version`` (None: only if it does not exist), else StoreError.

        S3: ``If-Match`` on the ETag (``If-None-Match: *`` when absent); file://: an exclusive lock,
        a comparison and an atomic rename.
        """

    @abstractmethod
    def delete_text(self, key: str) -> None:
        """Remove a document (absent is fine); keys under the write-once areas are refused."""

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """Document keys below the folder ``prefix`` (e.g. ``pointers``), relative to the store root."""

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`StoreError` with a remedy if the store cannot be reached or read."""

    # -- pointers (shared by both backends) --------------------------------------------------
    def pointer_info(self, name: str = CHAMPION) -> dict[str, Any] | None:
        """The pointer document ``{"model_id", "sha256", "previous", "updated_at"}`` or None if never set.

        ``sha256`` is the model's manifest checksum: a reader verifies that the model it downloads
        is the one the pointer was moved to (pointers written before it existed have none).
        """
        check_name(name, "pointer name")
        return self._parse_pointer(name, self.read_text(f"{POINTERS}/{name}.json"))

    def _parse_pointer(self, name: str, text: str | None) -> dict[str, Any] | None:
        if text is None:
            return None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StoreError(
                f"pointer {name!r} in {self.uri} is not valid JSON ({exc}): set it again with set_pointer"
            ) from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("model_id"), str):
            raise StoreError(f"pointer {name!r} in {self.uri} has no model_id: set it again with set_pointer")
        return doc

    def get_pointer(self, name: str = CHAMPION) -> str | None:
        """The model id that pointer ``name`` names, or None."""
        doc = self.pointer_info(name)
        return None if doc is None else str(doc["model_id"])

    def set_pointer(self, name: str, model_id: str, sha256: str | None = None) -> dict[str, Any]:
        """Point ``name`` at a complete model by a conditional write; the old target becomes ``previous``.

        The write succeeds only if the pointer is still what was read just before (compare-and-swap),
        so a concurrent mover makes this raise :class:`StoreError` instead of being overwritten.
        """
        check_name(name, "pointer name")
        check_name(model_id)
        if not self.is_complete(model_id):
            raise StoreError(
                f"cannot point {name!r} at model {model_id!r}: there is no complete upload of it in {self.uri} "
                "(upload it with put_dir first)"
            )
        key = f"{POINTERS}/{name}.json"
        text, version = self.read_versioned(key)
        current = self._parse_pointer(name, text)
        if current is not None and current["model_id"] == model_id and current.get("sha256") == sha256:
            return current  # already there: keep its history instead of recording itself as previous
        doc = {
            "model_id": model_id,
            "sha256": sha256,
            "previous": None if current is None else current["model_id"],
            "updated_at": _now(),
        }
        self.replace_text(key, json.dumps(doc, indent=2) + "\n", version)
        return doc

    def _moved_error(self, key: str) -> StoreError:
        return StoreError(f"{key} in {self.uri} changed while it was being replaced (another promoter?): "
                          "nothing was written; run the promotion again")

    def list_pointers(self) -> dict[str, str]:
        """Every pointer name with the model id it names."""
        out: dict[str, str] = {}
        for key in self.list_keys(POINTERS):
            name = key.rsplit("/", 1)[-1]
            if name.endswith(".json"):
                model_id = self.get_pointer(name[: -len(".json")])
                if model_id is not None:
                    out[name[: -len(".json")]] = model_id
        return out

    def _refuse_pointed(self, model_id: str) -> None:
        named_by = sorted(name for name, target in self.list_pointers().items() if target == model_id)
        if named_by:
            raise StoreError(
                f"refusing to delete model {model_id!r}: pointer(s) {', '.join(named_by)} name it; "
                "move them to another model first"
            )

    def _exists_error(self, model_id: str, area: str = MODELS) -> StoreError:
        return StoreError(f"{area}/{model_id} already exists in {self.uri}: model ids are never overwritten")

    def _missing_error(self, model_id: str, area: str = MODELS) -> StoreError:
        return StoreError(f"{area}/{model_id} is not in {self.uri}: see `patentml models list` for what is stored")

    @staticmethod
    def _check_writable_key(key: str) -> str:
        key = _check_key(key)
        for area in AREAS:
            if key == area or key.startswith(area + "/"):
                raise StoreError(f"{key!r} is inside {area}/, which is write-once: use put_dir for model files")
        return key

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"
