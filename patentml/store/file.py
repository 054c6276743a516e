"""The ``file://`` model store: a folder; model folders renamed into place, pointers replaced atomically."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

from patentml.exceptions import StoreError
from patentml.store.base import MODELS, ModelStore, _artifact_files, _check_key, check_name


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
