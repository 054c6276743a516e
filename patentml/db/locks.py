"""Every Postgres advisory-lock key PatentML takes, in one place (``pg_advisory_xact_lock`` bigint keys).

Fixed keys serialise one kind of work per database; the promotion key is derived from the store
URI, so promotions into different stores do not wait for each other.
"""

from __future__ import annotations

import hashlib

#: Two processes migrating at once wait for each other instead of racing on DDL.
MIGRATION = 7_243_901
#: One ingest batch at a time: batches upsert the same tables.
INGEST = 7_243_902
#: One splits rebuild at a time: snapshots are numbered and compared with the previous one.
SPLITS = 7_243_903
_PROMOTION_NAMESPACE = "patentml-promote:"
_SCORING_NAMESPACE = "patentml-score:"


def _derived(namespace: str, value: str) -> int:
    """A signed int64 key from a namespace and a name."""
    digest = hashlib.sha256((namespace + value).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def promotion(store_uri: str) -> int:
    """The key that serialises promotions into one store (a signed int64 from the store URI)."""
    return _derived(_PROMOTION_NAMESPACE, store_uri)


def scoring(model_id: str) -> int:
    """The key held while ``patentml score`` writes one model's suggestions (one scorer per model at a time)."""
    return _derived(_SCORING_NAMESPACE, model_id)
