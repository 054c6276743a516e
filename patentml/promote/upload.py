"""Putting a model into the store and moving the champion pointer: upload, read back, verify; restore on failure."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from patentml.exceptions import ArtifactError, PromotionError
from patentml.settings import Settings

if TYPE_CHECKING:
    from patentml.store import ModelStore

log = logging.getLogger(__name__)


def model_id_for(variant: str, run_id: int, manifest_sha256: str) -> str:
    """``<variant>-r<run>-<first 8 hex of the manifest's sha256>``: stable for one artifact, new for any change."""
    return f"{variant}-r{run_id}-{manifest_sha256[:8]}"


def upload_verified(store: "ModelStore", model_id: str, local: Path, settings: Settings) -> dict[str, Any]:
    """Put ``local`` into the store as ``model_id`` (or reuse an identical earlier upload), then read it
    back and verify every checksum. Returns the manifest. The verified copy becomes the local cache."""
    from patentml.artifact import MANIFEST, atomic_dir, file_sha256, verify_artifact

    local_manifest = verify_artifact(local)  # a corrupted local artifact is refused before any upload
    local_sha = file_sha256(local / MANIFEST)
    if store.is_complete(model_id):
        log.info("Model %s is already in %s (an earlier upload): verifying it", model_id, store.uri)
    else:  # absent, or an interrupted upload, which put_dir replaces
        log.info("Uploading %s to %s", model_id, store.uri)
        store.put_dir(model_id, local)
    root = settings.model_cache_dir
    root.mkdir(parents=True, exist_ok=True)
    final = root / model_id

    def read_back(folder: Path) -> None:
        store.get_dir(model_id, folder)
        verify_artifact(folder)
        if file_sha256(folder / MANIFEST) != local_sha:
            raise ArtifactError(f"model {model_id} in {store.uri} has a different manifest than the run's artifact {local}")

    try:
        if (final / MANIFEST).is_file():
            with tempfile.TemporaryDirectory(prefix=f".verify-{model_id}-", dir=root) as tmp:
                read_back(Path(tmp))
        else:  # the verified copy becomes the local cache entry (renamed into place only if it verifies)
            with atomic_dir(final, exist_ok=True) as tmp_dir:
                read_back(tmp_dir)
    except ArtifactError as exc:
        raise PromotionError(
            f"model {model_id} read back from {store.uri} does not verify ({exc}); the champion pointer was "
            "not moved. Remove the broken upload with ModelStore.delete_model and promote again"
        ) from exc
    return local_manifest


def move_pointer(store: "ModelStore", model_id: str, sha256: str) -> tuple[str | None, str | None]:
    """Point ``champion`` at ``model_id`` (with its manifest checksum) by a compare-and-swap; returns the
    (document, version) it replaced, (None, None) when there was none."""
    from patentml.store import CHAMPION, POINTERS

    before = store.read_versioned(f"{POINTERS}/{CHAMPION}.json")
    store.set_pointer(CHAMPION, model_id, sha256=sha256)
    return before


def restore_pointer(store: "ModelStore", before: tuple[str | None, str | None], model_id: str) -> None:
    """Best effort after a failed commit: put the old pointer document back if the pointer is still ours."""
    from patentml.store import CHAMPION, POINTERS

    key = f"{POINTERS}/{CHAMPION}.json"
    try:
        text, version = store.read_versioned(key)
        if text is None or store.get_pointer() != model_id:
            return  # someone else moved it meanwhile: theirs stays
        if before[0] is None:
            store.delete_text(key)
        else:
            store.replace_text(key, before[0], version)
    except Exception:  # the commit error is the one to report; the next promote reconciles the pointer
        log.exception("Could not restore the champion pointer after a failed registry commit")
