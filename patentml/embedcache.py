"""Sentence embeddings cached in Postgres by (encoder, text hash): nightly runs encode only what is new."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


class PgEmbeddingCache:
    """Vectors stored as float16 bytes in ``text_embeddings``; float16 keeps 3 significant digits of a
    unit vector's components, far below what changes a ranking."""

    def __init__(self, engine: "Engine") -> None:
        self.engine = engine

    def get_many(self, encoder_key: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            for start in range(0, len(hashes), 5000):
                cur.execute(
                    "SELECT content_hash, vector FROM text_embeddings WHERE encoder = %s AND content_hash = ANY(%s)",
                    (encoder_key, list(hashes[start : start + 5000])),
                )
                for h, vec in cur.fetchall():
                    out[h] = np.frombuffer(bytes(vec), dtype=np.float16).astype(np.float32)
            raw.commit()
        finally:
            raw.close()
        return out

    def put_many(self, encoder_key: str, vectors: dict[str, np.ndarray]) -> None:
        import psycopg2

        rows = [(encoder_key, h, psycopg2.Binary(v.astype(np.float16).tobytes())) for h, v in vectors.items()]
        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            from psycopg2.extras import execute_values

            execute_values(
                cur,
                "INSERT INTO text_embeddings (encoder, content_hash, vector) VALUES %s ON CONFLICT DO NOTHING",
                rows,
                page_size=1000,
            )
            raw.commit()
        finally:
            raw.close()
