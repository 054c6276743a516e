"""The ``s3://`` model store (boto3): write-once keys with ``If-None-Match``, the manifest uploaded last."""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from pathlib import Path
from typing import Any, Iterator

from patentml.exceptions import StoreError
from patentml.store.base import (
    _CREDENTIAL_CODES,
    _CREDENTIAL_HINT,
    _OWN_BUCKET_CODES,
    MANIFEST,
    MODELS,
    ModelStore,
    _artifact_files,
    _check_key,
    _safe_target,
    check_area,
    check_name,
)

log = logging.getLogger(__name__)
#: What S3 servers answer to a failed ``If-Match`` / ``If-None-Match`` condition.
_PRECONDITION_CODES = ("PreconditionFailed", "412", "ConditionalRequestConflict")


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

    def _model_prefix(self, model_id: str, area: str = MODELS) -> str:
        return self._key(check_area(area), check_name(model_id)) + "/"

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
    def put_dir(self, model_id: str, local_dir: Path | str, area: str = MODELS) -> list[str]:
        from botocore.exceptions import ClientError

        local_dir = Path(local_dir)
        files = _artifact_files(local_dir)
        base = self._model_prefix(model_id, area)
        if self.is_complete(model_id, area):
            raise self._exists_error(model_id, area)
        if self.exists(model_id, area):
            # Objects but no manifest (which goes last): an upload that died half-way. Reusing it
            # would serve a model with files missing; remove what it left and upload again.
            log.warning("%s/%s in %s is an interrupted upload (no %s): removing it and uploading again",
                        area, model_id, self.uri, MANIFEST)
            with self._errors(f"removing the interrupted upload {area}/{model_id}"):
                self._delete_keys(list(self._iter_keys(base)))
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
                    raise self._exists_error(model_id, area) from exc
                self._delete_quietly(written)
                raise
            except BaseException:
                self._delete_quietly(written)
                raise
        return files

    def get_dir(self, model_id: str, dest_dir: Path | str, area: str = MODELS) -> Path:
        base = self._model_prefix(model_id, area)
        dest = Path(dest_dir)
        with self._errors(f"downloading model {model_id!r}"):
            keys = list(self._iter_keys(base))
            if not keys:
                raise self._missing_error(model_id, area)
            for key in keys:
                target = _safe_target(dest, key[len(base) :])
                target.parent.mkdir(parents=True, exist_ok=True)
                self.client.download_file(self.bucket, key, str(target))
        return dest

    def exists(self, model_id: str, area: str = MODELS) -> bool:
        with self._errors(f"checking model {model_id!r}"):
            prefix = self._model_prefix(model_id, area)
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1)
        return bool(page.get("KeyCount") or page.get("Contents"))

    def is_complete(self, model_id: str, area: str = MODELS) -> bool:
        return self._head(self._model_prefix(model_id, area) + MANIFEST, f"checking model {model_id!r}")

    def _head(self, key: str, action: str) -> bool:
        """Whether ``key`` exists; a listing rather than HEAD, whose answers carry no error code to report."""
        with self._errors(action):
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=key, MaxKeys=1)
        return any(item["Key"] == key for item in page.get("Contents", []))

    def list_models(self, area: str = MODELS) -> list[str]:
        base = self._key(check_area(area)) + "/"
        # A flat listing, not Delimiter="/": SeaweedFS keeps reporting emptied "folders" as common
        # prefixes after their objects are deleted, which would resurrect deleted models.
        with self._errors("listing models"):
            return sorted({key[len(base) :].split("/", 1)[0] for key in self._iter_keys(base)})

    def delete_model(self, model_id: str, area: str = MODELS) -> None:
        base = self._model_prefix(model_id, area)
        if area == MODELS:
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

    def read_versioned(self, key: str) -> tuple[str | None, str | None]:
        from botocore.exceptions import ClientError

        with self._errors(f"reading {key}"):
            try:
                answer = self.client.get_object(Bucket=self.bucket, Key=self._key(_check_key(key)))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None, None
                raise
            return answer["Body"].read().decode("utf-8"), answer["ETag"]

    def replace_text(self, key: str, text: str, version: str | None) -> None:
        from botocore.exceptions import ClientError

        key = self._check_writable_key(key)
        condition = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        with self._errors(f"writing {key}"):
            try:
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=text.encode("utf-8"),
                                       ContentType="application/json", **condition)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in _PRECONDITION_CODES:
                    raise self._moved_error(key) from exc
                raise

    def delete_text(self, key: str) -> None:
        key = self._check_writable_key(key)
        with self._errors(f"deleting {key}"):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def put_file(self, key: str, path: Path | str) -> None:
        key = self._check_writable_key(key)
        with self._errors(f"writing {key}"):
            self.client.upload_file(str(path), self.bucket, self._key(key))

    def get_file(self, key: str, dest: Path | str) -> bool:
        from botocore.exceptions import ClientError

        key = _check_key(key)
        if not self._head(self._key(key), f"reading {key}"):
            return False
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
        with self._errors(f"reading {key}"):
            try:
                self.client.download_file(self.bucket, self._key(key), str(tmp))
                os.replace(tmp, dest)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return False
                raise
            finally:
                tmp.unlink(missing_ok=True)
        return True

    def delete_prefix(self, prefix: str) -> None:
        base = self._key(self._check_writable_key(prefix)) + "/"
        with self._errors(f"deleting {prefix}"):
            self._delete_keys(list(self._iter_keys(base)))

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
