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
#: one artifact per model id, never overwritten; ``pointers/<name>.json`` names the champion.
MODELS = "models"
POINTERS = "pointers"
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

    Concurrent promotions must be serialized by the caller (a Postgres advisory lock): moving a
    pointer is an atomic replace, not a compare-and-swap.
    """

    #: Canonical URI of the store (no secrets), e.g. ``file:///srv/models`` or ``s3://bucket/prefix``.
    uri: str

    # -- models ------------------------------------------------------------------------------
    @abstractmethod
    def put_dir(self, model_id: str, local_dir: Path | str) -> list[str]:
        """Store every file under ``local_dir`` as model ``model_id``; return the relative paths stored.

        Raises :class:`StoreError` if ``model_id`` already exists: a key is never overwritten.
        """

    @abstractmethod
    def get_dir(self, model_id: str, dest_dir: Path | str) -> Path:
        """Download model ``model_id`` into ``dest_dir`` (created if missing) and return it."""

    @abstractmethod
    def exists(self, model_id: str) -> bool:
        """True if any file is stored under ``model_id`` (even from an interrupted upload)."""

    @abstractmethod
    def list_models(self) -> list[str]:
        """Ids of the stored models, sorted."""

    @abstractmethod
    def delete_model(self, model_id: str) -> None:
        """Remove a model's files; meant for cleaning up a failed upload (pointed-to models are refused)."""

    # -- small documents ---------------------------------------------------------------------
    @abstractmethod
    def read_text(self, key: str) -> str | None:
        """The UTF-8 document at ``key`` (relative to the store root, e.g. ``registry/x.json``) or None."""

    @abstractmethod
    def write_text(self, key: str, text: str) -> None:
        """Write (or replace) a small document atomically; keys under ``models/`` are refused."""

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """Document keys below the folder ``prefix`` (e.g. ``pointers``), relative to the store root."""

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`StoreError` with a remedy if the store cannot be reached or read."""

    # -- pointers (shared by both backends) --------------------------------------------------
    def pointer_info(self, name: str = CHAMPION) -> dict[str, Any] | None:
        """The pointer document ``{"model_id", "previous", "updated_at"}`` or None if never set."""
        check_name(name, "pointer name")
        text = self.read_text(f"{POINTERS}/{name}.json")
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

    def set_pointer(self, name: str, model_id: str) -> dict[str, Any]:
        """Point ``name`` at an existing model in one atomic write; the old target becomes ``previous``."""
        check_name(name, "pointer name")
        check_name(model_id)
        if not self.exists(model_id):
            raise StoreError(
                f"cannot point {name!r} at model {model_id!r}: it is not in {self.uri} "
                "(upload it with put_dir first)"
            )
        current = self.pointer_info(name)
        if current is not None and current["model_id"] == model_id:
            return current  # already there: keep its history instead of recording itself as previous
        doc = {
            "model_id": model_id,
            "previous": None if current is None else current["model_id"],
            "updated_at": _now(),
        }
        self.write_text(f"{POINTERS}/{name}.json", json.dumps(doc, indent=2) + "\n")
        return doc

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

    def _exists_error(self, model_id: str) -> StoreError:
        return StoreError(f"model {model_id!r} already exists in {self.uri}: model ids are never overwritten")

    def _missing_error(self, model_id: str) -> StoreError:
        return StoreError(f"model {model_id!r} is not in {self.uri}: see list_models() for what is stored")

    @staticmethod
    def _check_writable_key(key: str) -> str:
        key = _check_key(key)
        if key == MODELS or key.startswith(MODELS + "/"):
            raise StoreError(f"{key!r} is inside {MODELS}/, which is write-once: use put_dir for model files")
        return key

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"
