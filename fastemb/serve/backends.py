"""What ``/v1/search`` searches: an index folder built by ``fastemb index`` or a flat index over a corpus.

A backend maps query *vectors* (from the arm's batched encoder) to hits, so the arm's model replica does the
encoding once and the backend can be swapped (``SearchBackend`` protocol).
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np


class SearchBackend(Protocol):
    size: int

    def search(self, vectors: np.ndarray, k: int) -> list[list[dict]]:
        """Top-k ``{"id", "score", "text"}`` per query vector, best first."""


class IndexDirBackend:
    """Adapter over ``fastemb.index.searcher.Searcher`` (compression and chunk aggregation included)."""

    def __init__(self, index_dir: str, nprobe: int | None = None):
        from fastemb.index.searcher import Searcher

        self.searcher = Searcher(index_dir, nprobe=nprobe)
        self.size = int(self.searcher.index.ntotal)

    def search(self, vectors: np.ndarray, k: int) -> list[list[dict]]:
        return self.searcher.search_embedded(vectors, k)


class CorpusBackend:
    """Exact inner-product search over a parquet corpus (id, text) embedded at start-up by ``encode``."""

    def __init__(self, corpus: str, encode, limit: int | None = None, id_column: str = "id",
                 text_column: str = "text"):
        import faiss
        import pyarrow.parquet as pq

        path = Path(corpus)
        if corpus == "wordnet":
            path = Path(__file__).resolve().parents[1] / "datasets" / "wordnet" / "test_corpus.parquet"
        table = pq.read_table(path, columns=[id_column, text_column])
        if limit:
            table = table.slice(0, limit)
        self.ids = [str(i) for i in table.column(id_column).to_pylist()]
        self.texts = table.column(text_column).to_pylist()
        vectors = np.ascontiguousarray(encode(self.texts), dtype=np.float32)
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)
        self.size = len(self.ids)

    def search(self, vectors: np.ndarray, k: int) -> list[list[dict]]:
        scores, rows = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), min(k, self.size))
        return [[{"id": self.ids[i], "score": float(s), "text": self.texts[i]} for s, i in zip(srow, irow) if i >= 0]
                for srow, irow in zip(scores, rows)]


def make_backend(arm, encode) -> SearchBackend | None:
    """The arm's search backend, or None when it has neither an index nor a corpus."""
    if arm.index_dir:
        return IndexDirBackend(arm.index_dir, arm.nprobe)
    if arm.corpus:
        return CorpusBackend(arm.corpus, encode, arm.corpus_limit)
    return None
