"""Model store: write-once model folders and small pointer documents on ``file://`` or ``s3://``."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from patentml.exceptions import StoreError
from patentml.store.base import AREAS, CANDIDATES, CHAMPION, CHECKPOINTS, MANIFEST, MODELS, POINTERS, ModelStore, check_name
from patentml.store.file import FileModelStore

if TYPE_CHECKING:
    from patentml.settings import Settings


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
    from patentml.store.s3 import S3ModelStore

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


def __getattr__(name: str) -> object:
    if name == "S3ModelStore":  # boto3 is imported only by those who use S3
        from patentml.store.s3 import S3ModelStore

        return S3ModelStore
    raise AttributeError(name)


__all__ = ["AREAS", "CANDIDATES", "CHAMPION", "CHECKPOINTS", "MANIFEST", "MODELS", "POINTERS", "FileModelStore", "ModelStore", "S3ModelStore", "check_name",
           "create_bucket_if_missing", "open_store", "parse_store_uri"]
