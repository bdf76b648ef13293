"""Writing embedding shards: the rows an embedding actor writes (ids, chunks, texts, skip reasons, vectors) and its
peak memory, shared by the text actors (fastemb/index/embed.py) and the image actors (fastemb/index/embed_images.py).
"""
from __future__ import annotations

import os
import resource
from pathlib import Path

import numpy as np
import pyarrow as pa

from fastemb.data.text import text_hashes


def peak_rss_mb() -> float:
    """This process's peak resident memory (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report_rss(rss_dir: str | None) -> None:
    """Write this actor's peak memory into the unit's ``_rss`` folder (absent on another node than the driver's)."""
    if rss_dir and os.path.isdir(rss_dir):
        Path(rss_dir, f"{os.getpid()}.rss").write_text(f"{peak_rss_mb():.1f}")


def shard_table(ids: list, chunks: list[int], texts: list, skips: list, vec_rows: list[int], vectors: np.ndarray,
                dim: int, hash_keys: list[str] | None = None) -> pa.Table:
    """Embedding-shard rows: ``vec_rows[i]`` is row i's row of ``vectors`` (-1: skipped, no vector); ``thash`` hashes
    ``hash_keys`` (default: the texts), which decides among duplicate ids (fastemb/index/shards.py)."""
    flat = np.zeros((len(vec_rows), dim), dtype=np.float32)
    has = np.array([v >= 0 for v in vec_rows], dtype=bool)
    if has.any():
        flat[has] = vectors[np.array([v for v in vec_rows if v >= 0])]
    vec = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), dim, mask=pa.array(~has))
    keys = hash_keys if hash_keys is not None else [t or "" for t in texts]
    return pa.table({"id": pa.array(ids, pa.string()), "chunk": pa.array(chunks, pa.int32()),
                     "text": pa.array(texts, pa.string()), "thash": pa.array(text_hashes(keys), pa.int64()),
                     "skip": pa.array(skips, pa.string()), "vector": vec})
