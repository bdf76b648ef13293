"""faiss on GPU where it is there: the ``faiss-gpu`` wheel installed in place of ``faiss-cpu`` (README "GPUs") and a
GPU visible to the process. Exact search (hard-negative mining) then runs on every GPU faiss sees, and the IVF coarse
quantizer's k-means of an index build runs on them; the index built is the same CPU index, written to the same file.
With ``faiss-cpu`` (the default and the tested path) every function here leaves the CPU path as it is.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

import faiss

logger = logging.getLogger(__name__)

GPU_MAX_K = 2048  # faiss's GPU indexes answer at most this many neighbours per query


def faiss_gpus() -> int:
    """GPUs faiss can use in this process: 0 with ``faiss-cpu`` or where none is visible."""
    count = getattr(faiss, "get_num_gpus", None)
    return int(count()) if count else 0


def search_index(index: faiss.Index, k: int | None = None) -> faiss.Index:
    """``index`` to search with: a copy on every GPU faiss sees (``k`` within ``GPU_MAX_K``), else ``index`` itself."""
    if faiss_gpus() == 0 or (k is not None and k > GPU_MAX_K):
        return index
    return faiss.index_cpu_to_all_gpus(index)


@contextmanager
def gpu_clustering(index: faiss.Index) -> Iterator[bool]:
    """Inside, ``index.train`` runs the k-means of an IVF index's coarse quantizer on the GPUs faiss sees (same
    metric); yields whether it does. The trained index is an ordinary CPU index (the GPU copy is only the clustering
    helper)."""
    ivf = faiss.try_extract_index_ivf(index) if faiss_gpus() else None
    if ivf is None:
        yield False
        return
    flat = faiss.IndexFlatIP(ivf.d) if ivf.metric_type == faiss.METRIC_INNER_PRODUCT else faiss.IndexFlatL2(ivf.d)
    helper = faiss.index_cpu_to_all_gpus(flat)  # held here: the IVF index keeps only a raw pointer to it
    ivf.clustering_index = helper
    try:
        yield True
    finally:
        ivf.clustering_index = None
