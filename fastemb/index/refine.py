"""``index.refine: disk``: re-rank candidates with vectors kept on disk instead of in memory.

The store is a raw (n, d) file next to the index: float16 (``refine_vectors.f16``, the default) or int8
(``refine_vectors.i8``, ``index.refine_dtype: int8``) with one symmetric scale per dimension calibrated on the training
sample (``refine_scales.npy``: max |x_j| / 127, values beyond it clipped). Row r is the vector (in the index's space,
i.e. after any compressor) of faiss id r. Search fetches ``k_factor × k`` candidates from the compressed index, reads
their rows from a read-only memmap and re-sorts them by the exact (int8: dequantised) score.
"""
from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np

STORE_FILES = {"float16": "refine_vectors.f16", "int8": "refine_vectors.i8"}  # index.refine_dtype → file name
STORE_FILE = STORE_FILES["float16"]
SCALES_FILE = "refine_scales.npy"
_SUFFIX_DTYPE = {Path(f).suffix: np.dtype(d) for d, f in STORE_FILES.items()}


def refine_k_factor(refine: str, k_factor: int | None, kind: str = "") -> int:
    """``index.k_factor`` (candidates re-ranked per result), or its default: 10 from disk (20 behind a binary index,
    whose Hamming ranking is coarser: bench/binary_index.py), 4 in memory."""
    return int(k_factor or (4 if refine != "disk" else 20 if kind == "binary" else 10))


def store_dtype(path: str | os.PathLike) -> np.dtype:
    """The element type of a store file, from its suffix (``.f16``, ``.i8``)."""
    suffix = Path(path).suffix
    if suffix not in _SUFFIX_DTYPE:
        raise ValueError(f"{path}: not a refine store (expected one of {', '.join(STORE_FILES.values())})")
    return _SUFFIX_DTYPE[suffix]


def open_store(path: str | os.PathLike, dim: int, rows: int | None = None, mode: str = "r") -> np.memmap:
    """The (rows, dim) vector file as a memmap, its dtype from its name; ``rows`` is needed to create one (``w+``),
    else read from its size."""
    dtype = store_dtype(path)
    if rows is None:
        size = Path(path).stat().st_size
        if size % (dim * dtype.itemsize):
            raise ValueError(f"{path}: {size} bytes is not a whole number of {dim}-d {dtype} vectors")
        rows = size // (dim * dtype.itemsize)
    return np.memmap(path, dtype=dtype, mode=mode, shape=(rows, dim))


def int8_scales(sample: np.ndarray) -> np.ndarray:
    """Symmetric per-dimension int8 scales of a sample: max |x_j| / 127 (1 where a dimension is all zero)."""
    top = np.abs(np.asarray(sample, dtype=np.float32)).max(axis=0) / 127.0
    return np.where(top > 0, top, 1.0).astype(np.float32)


def to_store(x: np.ndarray, scales: np.ndarray | None) -> np.ndarray:
    """Rows as the store holds them: int8 codes with ``scales`` (rounded, clipped to ±127), else as given (the
    float16 memmap casts on assignment)."""
    if scales is None:
        return x
    return np.clip(np.rint(x / scales), -127, 127).astype(np.int8)


def rerank_from_disk(candidates: np.ndarray, queries: np.ndarray, store: np.ndarray, k: int,
                     metric: int = faiss.METRIC_INNER_PRODUCT, scales: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank candidate ids (-1 = none) by the exact score against ``store`` rows (times ``scales`` for an int8
    store); top ``k`` (scores, ids).

    Rows are read in increasing order (sequential on disk); ties keep the smaller id. Inner product: best = largest
    (missing: -inf); L2: squared distance, best = smallest (missing: +inf)."""
    l2 = metric == faiss.METRIC_L2
    scores = np.full((len(candidates), k), np.inf if l2 else -np.inf, dtype=np.float32)
    ids = np.full((len(candidates), k), -1, dtype=np.int64)
    for i, row in enumerate(candidates):
        row = np.sort(row[row >= 0])
        x = store[row].astype(np.float32)
        if scales is not None:
            x *= scales
        q = np.asarray(queries[i], dtype=np.float32)
        s = ((x - q) ** 2).sum(1) if l2 else x @ q
        top = np.argsort(s if l2 else -s, kind="stable")[:k]
        scores[i, : len(top)], ids[i, : len(top)] = s[top], row[top]
    return scores, ids
