"""Model store: write-once model folders and small pointer documents on ``file://`` or ``s3://``."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Iterator
from urllib.parse import unquote, urlsplit

from patentml.exceptions import StoreError

if TYPE_CHECKING:
    from patentml.settings import Settings

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


class FileModelStore(ModelStore):
    """A local folder; model folders appear by one atomic rename, documents by ``os.replace``."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = self.root.as_uri()

    def _model_dir(self, model_id: str) -> Path:
        return self.root / MODELS / check_name(model_id)

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except StoreError:
            raise
        except OSError as exc:
            raise StoreError(
                f"model store folder {self.root}: {action} failed ({exc.strerror or exc}): "
                "check the folder's permissions and free space, or set PATENTML_STORE_URI"
            ) from exc

    def put_dir(self, model_id: str, local_dir: Path | str) -> list[str]:
        final = self._model_dir(model_id)
        local_dir = Path(local_dir)
        files = _artifact_files(local_dir)
        if final.exists():
            raise self._exists_error(model_id)
        with self._errors(f"storing model {model_id!r}"):
            final.parent.mkdir(parents=True, exist_ok=True)
            # The temp folder sits beside the final one (same file system), so the rename is atomic
            # and readers see either no model or a complete one.
            tmp = Path(tempfile.mkdtemp(prefix=f".incoming-{model_id}-", dir=final.parent))
            try:
                for rel in files:
                    target = tmp / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(local_dir / rel, target)
                    with open(target, "rb") as fh:
                        os.fsync(fh.fileno())
                try:
                    os.rename(tmp, final)  # fails if another writer got there first (non-empty target)
                except OSError as exc:
                    if final.exists():
                        raise self._exists_error(model_id) from exc
                    raise
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        return files

    def get_dir(self, model_id: str, dest_dir: Path | str) -> Path:
        src = self._model_dir(model_id)
        dest = Path(dest_dir)
        if not src.is_dir():
            raise self._missing_error(model_id)
        with self._errors(f"copying model {model_id!r} to {dest}"):
            shutil.copytree(src, dest, dirs_exist_ok=True)
        return dest

    def exists(self, model_id: str) -> bool:
        return self._model_dir(model_id).exists()

    def list_models(self) -> list[str]:
        models = self.root / MODELS
        if not models.is_dir():
            return []
        with self._errors("listing models"):
            return sorted(p.name for p in models.iterdir() if p.is_dir() and not p.name.startswith("."))

    def delete_model(self, model_id: str) -> None:
        target = self._model_dir(model_id)
        self._refuse_pointed(model_id)
        if not target.exists():
            return
        with self._errors(f"deleting model {model_id!r}"):
            # Rename first so that a crash mid-delete never leaves a half model under its real id.
            doomed = target.with_name(f".deleting-{model_id}-{uuid.uuid4().hex[:8]}")
            os.rename(target, doomed)
            shutil.rmtree(doomed)

    def read_text(self, key: str) -> str | None:
        path = self.root / _check_key(key)
        with self._errors(f"reading {key}"):
            try:
                return path.read_text(encoding="utf-8")
            except FileNotFoundError:
                return None

    def write_text(self, key: str, text: str) -> None:
        path = self.root / self._check_writable_key(key)
        with self._errors(f"writing {key}"):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(text)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp_name, path)  # readers see the old or the new document, never a torn one
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_name)
                raise

    def list_keys(self, prefix: str) -> list[str]:
        base = self.root / _check_key(prefix)
        if not base.is_dir():
            return []
        with self._errors(f"listing {prefix}"):
            return sorted(
                p.relative_to(self.root).as_posix()
                for p in base.rglob("*")
                if p.is_file() and not p.name.startswith(".")
            )

    def check(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"model store {self.root} exists but is not a folder: fix PATENTML_STORE_URI")
        with self._errors("creating the store folder"):
            self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StoreError(f"model store folder {self.root} is not writable: fix its permissions")


class S3ModelStore(ModelStore):
    """A bucket and key prefix on any S3 server (AWS, SeaweedFS, MinIO, Ceph) through boto3.

    Model files are written with ``If-None-Match: *`` so that even a racing writer cannot overwrite
    a key; servers without conditional writes fall back to check-then-write.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> None:
        try:
            import boto3  # lazy: only S3 users pay for the import
            from botocore.config import Config
        except ImportError as exc:  # pragma: no cover - boto3 is a dependency
            raise StoreError("an s3:// model store needs boto3: pip install boto3") from exc
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._conditional_writes = True
        self.client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url or None,
            region_name=region,
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},  # SeaweedFS/MinIO/Ceph have no virtual-host DNS
                retries={"max_attempts": 3, "mode": "standard"},  # fail fast on a wrong endpoint
                connect_timeout=5,
                read_timeout=120,
            ),
        )

    # -- helpers -----------------------------------------------------------------------------
    @property
    def _endpoint(self) -> str:
        return self.endpoint_url or "AWS S3"

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _model_prefix(self, model_id: str) -> str:
        return self._key(MODELS, check_name(model_id)) + "/"

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        try:
            yield
        except StoreError:
            raise
        except ClientError as exc:
            raise self._client_error(exc, action) from exc
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise StoreError(
                f"no S3 credentials for {self.uri} at endpoint {self._endpoint} while {action}: "
                "set PATENTML_S3_ACCESS_KEY_ID / PATENTML_S3_SECRET_ACCESS_KEY "
                "or the patentml_s3 Airflow Connection"
            ) from exc
        except (EndpointConnectionError, ConnectTimeoutError) as exc:
            raise StoreError(
                f"cannot reach the S3 endpoint {self._endpoint} while {action}: is the server running? "
                "check PATENTML_S3_ENDPOINT_URL or the patentml_s3 Airflow Connection"
            ) from exc
        except BotoCoreError as exc:
            raise StoreError(f"S3 client error on {self.uri} while {action}: {exc}") from exc

    def _client_error(self, exc: Any, action: str) -> StoreError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _CREDENTIAL_CODES:
            return StoreError(
                f"S3 rejected the credentials for endpoint {self._endpoint} ({code}) while {action}: "
                + _CREDENTIAL_HINT
            )
        if code in ("AccessDenied", "403", "Forbidden"):
            # HEAD answers carry no error body, so a bare 403 may also be a bad key.
            return StoreError(
                f"S3 denied access to {self.uri} at endpoint {self._endpoint} ({code}) while {action}: "
                f"the credentials may be wrong or lack permission on bucket {self.bucket!r}; {_CREDENTIAL_HINT}"
            )
        if code == "NoSuchBucket":
            return StoreError(
                f"S3 bucket {self.bucket!r} does not exist at endpoint {self._endpoint} (while {action}): "
                "create it once (patentml.store.create_bucket_if_missing(), or "
                f"`aws s3 mb s3://{self.bucket}`) or fix PATENTML_STORE_URI"
            )
        message = error.get("Message") or str(exc)
        return StoreError(f"S3 error on {self.uri} while {action} ({code or status}): {message}")

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"]

    def _put_new(self, key: str, path: Path) -> None:
        """PutObject that refuses to replace an existing key (412 PreconditionFailed)."""
        from botocore.exceptions import ClientError

        with open(path, "rb") as body:
            if self._conditional_writes:
                try:
                    self.client.put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*")
                    return
                except ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") not in ("NotImplemented", "501"):
                        raise
                    self._conditional_writes = False  # old server: exists() was checked before
                    body.seek(0)
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body)

    # -- models ------------------------------------------------------------------------------
    def put_dir(self, model_id: str, local_dir: Path | str) -> list[str]:
        from botocore.exceptions import ClientError

        local_dir = Path(local_dir)
        files = _artifact_files(local_dir)
        base = self._model_prefix(model_id)
        if self.exists(model_id):
            raise self._exists_error(model_id)
        written: list[str] = []
        with self._errors(f"uploading model {model_id!r}"):
            try:
                for rel in files:
                    key = base + rel
                    self._put_new(key, local_dir / rel)
                    written.append(key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "PreconditionFailed":
                    # Another writer is storing the same id: remove only the keys we created.
                    self._delete_quietly(written)
                    raise self._exists_error(model_id) from exc
                self._delete_quietly(written)
                raise
            except BaseException:
                self._delete_quietly(written)
                raise
        return files

    def get_dir(self, model_id: str, dest_dir: Path | str) -> Path:
        base = self._model_prefix(model_id)
        dest = Path(dest_dir)
        with self._errors(f"downloading model {model_id!r}"):
            keys = list(self._iter_keys(base))
            if not keys:
                raise self._missing_error(model_id)
            for key in keys:
                target = _safe_target(dest, key[len(base) :])
                target.parent.mkdir(parents=True, exist_ok=True)
                self.client.download_file(self.bucket, key, str(target))
        return dest

    def exists(self, model_id: str) -> bool:
        with self._errors(f"checking model {model_id!r}"):
            prefix = self._model_prefix(model_id)
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1)
        return bool(page.get("KeyCount") or page.get("Contents"))

    def list_models(self) -> list[str]:
        base = self._key(MODELS) + "/"
        # A flat listing, not Delimiter="/": SeaweedFS keeps reporting emptied "folders" as common
        # prefixes after their objects are deleted, which would resurrect deleted models.
        with self._errors("listing models"):
            return sorted({key[len(base) :].split("/", 1)[0] for key in self._iter_keys(base)})

    def delete_model(self, model_id: str) -> None:
        base = self._model_prefix(model_id)
        self._refuse_pointed(model_id)
        with self._errors(f"deleting model {model_id!r}"):
            self._delete_keys(list(self._iter_keys(base)))

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise StoreError(
                    f"S3 could not delete {len(answer['Errors'])} key(s) in {self.uri}, e.g. "
                    f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}"
                )

    def _delete_quietly(self, keys: list[str]) -> None:
        """Best-effort cleanup after a failed upload; the original error is the one to report."""
        with contextlib.suppress(Exception):
            self._delete_keys(keys)

    # -- documents ---------------------------------------------------------------------------
    def read_text(self, key: str) -> str | None:
        from botocore.exceptions import ClientError

        with self._errors(f"reading {key}"):
            try:
                answer = self.client.get_object(Bucket=self.bucket, Key=self._key(_check_key(key)))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
            return answer["Body"].read().decode("utf-8")

    def write_text(self, key: str, text: str) -> None:
        key = self._check_writable_key(key)
        content_type = "application/json" if key.endswith(".json") else "text/plain; charset=utf-8"
        with self._errors(f"writing {key}"):
            # One PutObject replaces the whole object atomically: readers never see a torn document.
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=text.encode("utf-8"), ContentType=content_type
            )

    def list_keys(self, prefix: str) -> list[str]:
        base = self._key(_check_key(prefix)) + "/"
        strip = len(self._key()) + 1 if self.prefix else 0
        with self._errors(f"listing {prefix}"):
            return sorted(key[strip:] for key in self._iter_keys(base))

    def check(self) -> None:
        with self._errors("checking the bucket"):
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(), MaxKeys=1)

    def ensure_bucket(self) -> bool:
        """Create the bucket if it is missing (set-up helper); True if it was created."""
        from botocore.exceptions import ClientError

        with self._errors(f"creating bucket {self.bucket!r}"):
            try:
                self.client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
                return False
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "NoSuchBucket":
                    raise
            kwargs: dict[str, Any] = {"Bucket": self.bucket}
            if self.region and self.region != "us-east-1":  # AWS rejects an explicit us-east-1
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
            try:
                self.client.create_bucket(**kwargs)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in _OWN_BUCKET_CODES:
                    return False
                raise
        return True


def parse_store_uri(uri: str) -> tuple[str, str, str]:
    """``("file", folder, "")`` or ``("s3", bucket, prefix)``; raises StoreError on anything else."""
    parts = urlsplit(uri)
    if parts.scheme == "file":
        # file:///abs/dir -> /abs/dir; file://relative/dir -> relative/dir (a convenience for the CLI)
        host = "" if parts.netloc in ("", "localhost") else parts.netloc
        folder = unquote(host + parts.path)
        if not folder:
            raise StoreError(f"store URI {uri!r} names no folder: use file:///absolute/folder")
        return "file", folder, ""
    if parts.scheme == "s3":
        if not parts.netloc:
            raise StoreError(f"store URI {uri!r} names no bucket: use s3://bucket/prefix")
        return "s3", parts.netloc, parts.path.strip("/")
    raise StoreError(f"store URI {uri!r} must start with file:// or s3:// (e.g. s3://bucket/models)")


def open_store(
    target: "Settings | str | None" = None,
    *,
    settings: "Settings | None" = None,
    create_bucket_if_missing: bool = False,
) -> ModelStore:
    """Open the store named by ``target``: a Settings, a store URI, or None for the process settings.

    With a URI, S3 endpoint/region/credentials come from ``settings`` (default: the process
    settings). ``create_bucket_if_missing`` creates an absent bucket (or folder), for set-up.
    """
    from patentml.settings import Settings, get_settings

    if isinstance(target, Settings):
        conf = target
        uri = target.resolved_store_uri
    else:
        conf = settings or get_settings()
        uri = target or conf.resolved_store_uri
    kind, location, prefix = parse_store_uri(uri)
    store: ModelStore
    if kind == "file":
        store = FileModelStore(location)
        if create_bucket_if_missing:
            store.check()
        return store
    s3 = S3ModelStore(
        location,
        prefix,
        endpoint_url=conf.s3_endpoint_url,
        region=conf.s3_region,
        access_key_id=conf.s3_access_key_id,
        secret_access_key=conf.s3_secret_access_key,
    )
    if create_bucket_if_missing:
        s3.ensure_bucket()
    return s3


def create_bucket_if_missing(
    target: "Settings | str | None" = None, *, settings: "Settings | None" = None
) -> ModelStore:
    """Set-up helper: open the store and create its bucket (or folder) if absent."""
    return open_store(target, settings=settings, create_bucket_if_missing=True)
