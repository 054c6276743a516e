"""The ``file://`` model store: a folder; model folders renamed into place, pointers replaced atomically."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

from patentml.exceptions import StoreError
from patentml.store.base import MANIFEST, MODELS, ModelStore, _artifact_files, _check_key, check_area, check_name

log = logging.getLogger(__name__)
#: The lock file that serialises compare-and-swap writes of documents (``fcntl.flock``).
LOCK_FILE = ".documents.lock"


class FileModelStore(ModelStore):
    """A local folder; model folders appear by one atomic rename, documents by ``os.replace``."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = self.root.as_uri()

    def _model_dir(self, model_id: str, area: str = MODELS) -> Path:
        return self.root / check_area(area) / check_name(model_id)

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

    def put_dir(self, model_id: str, local_dir: Path | str, area: str = MODELS) -> list[str]:
        final = self._model_dir(model_id, area)
        local_dir = Path(local_dir)
        files = _artifact_files(local_dir)
        if final.exists():
            # Folders appear by rename, complete; one without a manifest was put there by hand.
            raise self._exists_error(model_id, area)
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
                        raise self._exists_error(model_id, area) from exc
                    raise
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        return files

    def get_dir(self, model_id: str, dest_dir: Path | str, area: str = MODELS) -> Path:
        src = self._model_dir(model_id, area)
        dest = Path(dest_dir)
        if not src.is_dir():
            raise self._missing_error(model_id, area)
        with self._errors(f"copying model {model_id!r} to {dest}"):
            shutil.copytree(src, dest, dirs_exist_ok=True)
        return dest

    def exists(self, model_id: str, area: str = MODELS) -> bool:
        return self._model_dir(model_id, area).exists()

    def is_complete(self, model_id: str, area: str = MODELS) -> bool:
        return (self._model_dir(model_id, area) / MANIFEST).is_file()

    def list_models(self, area: str = MODELS) -> list[str]:
        models = self.root / check_area(area)
        if not models.is_dir():
            return []
        with self._errors("listing models"):
            return sorted(p.name for p in models.iterdir() if p.is_dir() and not p.name.startswith("."))

    def delete_model(self, model_id: str, area: str = MODELS) -> None:
        target = self._model_dir(model_id, area)
        if area == MODELS:
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
            self._atomic_write(path, text.encode("utf-8"))

    @staticmethod
    def _atomic_write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_name, path)  # readers see the old or the new document, never a torn one
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise

    @contextlib.contextmanager
    def _documents_lock(self) -> Iterator[None]:
        """An exclusive ``flock`` on the store's lock file: compare-and-swap writers take turns."""
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def read_versioned(self, key: str) -> tuple[str | None, str | None]:
        path = self.root / _check_key(key)
        with self._errors(f"reading {key}"):
            data = _read_or_none(path)
        return (None, None) if data is None else (data.decode("utf-8"), hashlib.sha256(data).hexdigest())

    def replace_text(self, key: str, text: str, version: str | None) -> None:
        path = self.root / self._check_writable_key(key)
        with self._errors(f"writing {key}"), self._documents_lock():
            data = _read_or_none(path)  # the version is the content's sha256, read under the lock
            if (None if data is None else hashlib.sha256(data).hexdigest()) != version:
                raise self._moved_error(key)
            self._atomic_write(path, text.encode("utf-8"))

    def delete_text(self, key: str) -> None:
        path = self.root / self._check_writable_key(key)
        with self._errors(f"deleting {key}"), self._documents_lock():
            path.unlink(missing_ok=True)

    def put_file(self, key: str, path: Path | str) -> None:
        target = self.root / self._check_writable_key(key)
        with self._errors(f"writing {key}"):
            _copy_atomic(Path(path), target)

    def get_file(self, key: str, dest: Path | str) -> bool:
        src = self.root / _check_key(key)
        with self._errors(f"reading {key}"):
            if not src.is_file():
                return False
            _copy_atomic(src, Path(dest))
        return True

    def delete_prefix(self, prefix: str) -> None:
        base = self.root / self._check_writable_key(prefix)
        with self._errors(f"deleting {prefix}"):
            shutil.rmtree(base, ignore_errors=True)

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


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _copy_atomic(src: Path, target: Path) -> None:
    """Copy to a temp name beside ``target``, then rename: a reader never sees half a checkpoint."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
