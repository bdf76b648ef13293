"""``index.refine: disk``: re-rank candidates with float vectors kept on disk instead of in memory.

The store is a raw float16 (n, d) file (``refine_vectors.f16``) next to the index: row r is the vector (in the
index's space, i.e. after any compressor) of faiss id r. Search fetches ``k_factor × k`` candidates from the
compressed index, reads their rows from a read-only memmap and re-sorts them by the exact score.
"""
from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np

STORE_FILE = "refine_vectors.f16"
STORE_DTYPE = np.dtype(np.float16)


def refine_k_factor(refine: str, k_factor: int | None) -> int:
    """``index.k_factor`` (candidates re-ranked per result), or its default: 10 from disk, 4 in memory."""
    return int(k_factor or (10 if refine == "disk" else 4))


def open_store(path: str | os.PathLike, dim: int, rows: int | None = None, mode: str = "r") -> np.memmap:
    """The fp16 (rows, dim) vector file as a memmap; ``rows`` is needed to create one (``w+``), else read from its
    size."""
    if rows is None:
        size = Path(path).stat().st_size
        if size % (dim * STORE_DTYPE.itemsize):
            raise ValueError(f"{path}: {size} bytes is not a whole number of {dim}-d float16 vectors")
        rows = size // (dim * STORE_DTYPE.itemsize)
    return np.memmap(path, dtype=STORE_DTYPE, mode=mode, shape=(rows, dim))


def rerank_from_disk(candidates: np.ndarray, queries: np.ndarray, store: np.ndarray, k: int,
                     metric: int = faiss.METRIC_INNER_PRODUCT) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank candidate ids (-1 = none) by the exact score against ``store`` rows; top ``k`` (scores, ids).

    Rows are read in increasing order (sequential on disk); ties keep the smaller id. Inner product: best = largest
    (missing: -inf); L2: squared distance, best = smallest (missing: +inf)."""
    l2 = metric == faiss.METRIC_L2
    scores = np.full((len(candidates), k), np.inf if l2 else -np.inf, dtype=np.float32)
    ids = np.full((len(candidates), k), -1, dtype=np.int64)
    for i, row in enumerate(candidates):
        row = np.sort(row[row >= 0])
        x = store[row].astype(np.float32)
        q = np.asarray(queries[i], dtype=np.float32)
        s = ((x - q) ** 2).sum(1) if l2 else x @ q
        top = np.argsort(s if l2 else -s, kind="stable")[:k]
        scores[i, : len(top)], ids[i, : len(top)] = s[top], row[top]
    return scores, ids
