"""A run's files in the model store: the candidate artifact every finished run uploads, the checkpoints
of a run in progress, and fetching either by id on any host.

Nothing here relies on a disk shared between tasks: a run trained on one worker is evaluated,
blended and promoted on another by fetching ``candidates/<artifact_id>/`` into that worker's own
cache (``settings.model_cache_dir``), verified against the manifest checksum the run row records;
a retry on another host continues from the last epoch whose checkpoint reached the store.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from patentml.exceptions import DataError
from patentml.settings import Settings, get_settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from patentml.store import ModelStore

log = logging.getLogger(__name__)


def upload_candidate(store: "ModelStore", artifact: Path, variant: str, run_id: int) -> tuple[str, str]:
    """Put a finished run's artifact under ``candidates/<id>`` (write-once); returns (id, manifest sha256).

    The id is the one promotion gives the model (``<variant>-r<run>-<sha8>``), so a candidate and
    the model promoted from it share a cache entry. A complete earlier upload of the same bytes
    (a retry after the upload) is kept.
    """
    from patentml.artifact import MANIFEST, file_sha256, verify_artifact
    from patentml.promote.upload import model_id_for
    from patentml.store import CANDIDATES

    verify_artifact(artifact)  # never upload what does not check out locally
    sha = file_sha256(artifact / MANIFEST)
    candidate = model_id_for(variant, run_id, sha)
    if store.is_complete(candidate, CANDIDATES):
        log.info("Run %s: candidate %s is already in %s", run_id, candidate, store.uri)
    else:
        store.put_dir(candidate, artifact, CANDIDATES)
        log.info("Run %s: artifact uploaded to %s/%s/%s", run_id, store.uri, CANDIDATES, candidate)
    return candidate, sha


def run_artifact(engine: "Engine", run_id: int, settings: Settings | None = None) -> Path:
    """A verified local copy of a succeeded run's model, fetched by id from the store into this host's cache."""
    from patentml.artifact import cached_model_dir
    from patentml.db import runs
    from patentml.store import CANDIDATES, open_store

    with engine.connect() as conn:
        row = runs.get(conn, run_id)
    if row is None:
        raise DataError(f"There is no run {run_id}")
    if row.status != "succeeded" or not (row.artifact_id or row.artifact_dir):
        raise DataError(f"Run {run_id} has no model (status {row.status})")
    if not row.artifact_id:  # trained before runs uploaded their artifact: only its own host has it
        path = Path(row.artifact_dir)
        if not path.exists():
            raise DataError(f"The model of run {run_id} is missing from {path} (it was trained before runs "
                            "uploaded their artifact to the store, on another machine or PATENTML_HOME)")
        return path
    settings = settings or get_settings()
    store = open_store(row.artifact_store, settings=settings)
    return cached_model_dir(store, row.artifact_id, settings.model_cache_dir, area=CANDIDATES,
                            expected_sha256=row.artifact_sha256, verify=True)


class StoreCheckpoints:
    """A run's resumable files (the torch loop's ``checkpoint.pt`` and ``best.safetensors``) mirrored
    in ``checkpoints/<run_id>/`` of the store after every epoch, and brought back on any host."""

    def __init__(self, store: "ModelStore", run_id: int) -> None:
        from patentml.store import CHECKPOINTS

        self.store, self.run_id, self.prefix = store, run_id, f"{CHECKPOINTS}/{run_id}"

    def save(self, files: list[Path]) -> None:
        """Upload the files of a finished epoch, the checkpoint (which names the epoch) last."""
        for path in sorted(files, key=lambda p: p.suffix == ".pt"):
            self.store.put_file(f"{self.prefix}/{path.name}", path)

    def restore(self, work_dir: Path) -> list[str]:
        """Download what the store holds into ``work_dir`` (replacing local copies); returns the names."""
        names = sorted(key.rsplit("/", 1)[-1] for key in self.store.list_keys(self.prefix))
        # The checkpoint last, so a local checkpoint never describes best weights it does not have.
        for name in sorted(names, key=lambda n: n.endswith(".pt")):
            self.store.get_file(f"{self.prefix}/{name}", work_dir / name)
        if names:
            log.info("Run %s: restored %s from %s/%s", self.run_id, ", ".join(names), self.store.uri, self.prefix)
        return names

    def clear(self) -> None:
        self.store.delete_prefix(self.prefix)

    def __call__(self, files: list[Path]) -> Any:
        return self.save(files)
