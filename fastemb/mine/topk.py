"""Top-K of every query over a corpus with faiss, one chunk of queries at a time (never a Q × C matrix)."""
from __future__ import annotations

from typing import Iterator

import faiss
import numpy as np


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalised float32 copy (cosine = inner product; zero rows stay zero)."""
    x = np.ascontiguousarray(x, dtype=np.float32).copy()
    faiss.normalize_L2(x)
    return x


def exact_index(corpus: np.ndarray, top_k: int | None = None) -> faiss.Index:
    """Exact inner-product index over ``corpus`` (n, d) float32, on the GPUs where faiss-gpu sees any and ``top_k``
    (the largest k searched) is within their limit (fastemb/index/faiss_gpu.py)."""
    from fastemb.index.faiss_gpu import search_index

    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(np.ascontiguousarray(corpus, dtype=np.float32))
    return search_index(index, top_k)


def chunked_topk(index: faiss.Index, queries: np.ndarray, k: int,
                 chunk: int = 4096) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield (first query row, scores (c, k), corpus rows (c, k)) per chunk of ``chunk`` queries.

    Results take O(chunk × k) memory whatever the number of queries (faiss itself scores in blocks); rows are
    −1 when the corpus has fewer than k entries."""
    k = min(k, index.ntotal)
    for start in range(0, len(queries), chunk):
        scores, rows = index.search(np.ascontiguousarray(queries[start:start + chunk], dtype=np.float32), k)
        yield start, scores, rows


def candidate_mask(index: faiss.Index, queries: np.ndarray, k: int, chunk: int = 4096) -> np.ndarray:
    """Boolean mask (ntotal,) of the corpus rows that are in some query's top-k, searched chunk by chunk."""
    mask = np.zeros(index.ntotal, dtype=bool)
    for _, _, rows in chunked_topk(index, queries, k, chunk):
        mask[rows[rows >= 0]] = True
    return mask
