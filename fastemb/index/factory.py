"""Index configuration → faiss factory string, and the search-time parameters.

Types (fastemb/spec/index.py's ``IndexSpec.type``): ``flat`` (exact), ``ivf_flat``, ``pq`` (flat PQ), ``ivf_pq``,
``opq_ivf_pq``, ``hnsw``, ``binary`` (sign bits: fastemb/index/binary.py); each optionally
re-ranked (``refine``: ``flat`` = the stored float vectors, ``sqfp16``, ``sq8``; ``disk`` = fp16 vectors in a file
next to the index, outside faiss: fastemb/index/refine.py). ``bytes_per_vector`` picks the
PQ code size (the number of 8-bit sub-quantizers), so a tuner can search one number.
"""
from __future__ import annotations

import math
from typing import get_args

import faiss

from fastemb.compress.pq import pq_factory, pq_m_for_bytes
from fastemb.index.binary import FACTORY as BINARY_FACTORY
from fastemb.spec import IndexSpec

INDEX_TYPES = get_args(IndexSpec.model_fields["type"].annotation)  # the schema's list
REFINE = {"none": "", "flat": ",RFlat", "sqfp16": ",Refine(SQfp16)", "sq8": ",Refine(SQ8)",
          "disk": ""}  # disk: the faiss index holds the codes only
if set(REFINE) != set(get_args(IndexSpec.model_fields["refine"].annotation)):
    raise RuntimeError("factory.REFINE must have one key per IndexSpec.refine value")


def default_nlist(n: int) -> int:
    """About 4·sqrt(N) inverted lists, at most N/39 so that k-means has ≥ 39 points per centroid."""
    return max(1, min(int(4 * math.sqrt(max(n, 1))), max(1, n // 39)))


def factory_string(kind: str, dim: int, n: int, *, nlist: int | None = None, bytes_per_vector: int | None = 48,
                   pq_m: int | None = None, pq_nbits: int = 8, hnsw_m: int = 32, refine: str = "none") -> str:
    """The faiss ``index_factory`` key of a configuration (``n``: vectors to index, for the default nlist)."""
    if kind not in INDEX_TYPES:
        raise ValueError(f"index.type: unknown {kind!r}; allowed: {', '.join(INDEX_TYPES)}")
    if refine not in REFINE:
        raise ValueError(f"index.refine: unknown {refine!r}; allowed: {', '.join(REFINE)}")
    m = pq_m or (pq_m_for_bytes(dim, bytes_per_vector or 48, pq_nbits) if "pq" in kind else 0)
    ivf = f"IVF{nlist or default_nlist(n)}"
    key = {"flat": "Flat", "ivf_flat": f"{ivf},Flat", "hnsw": f"HNSW{hnsw_m}",
           "pq": pq_factory(dim, m, pq_nbits),
           "ivf_pq": f"{ivf},{pq_factory(dim, m, pq_nbits)}",
           "opq_ivf_pq": f"OPQ{m}_{dim},{ivf},{pq_factory(dim, m, pq_nbits)}", "binary": BINARY_FACTORY}[kind]
    if kind in ("flat", "hnsw") and refine != "none":
        raise ValueError(f"index.refine={refine!r} only makes sense with a compressed code (pq/ivf types)")
    if kind == "binary" and refine not in ("none", "disk"):
        raise ValueError(f"index.refine={refine!r}: index.type=binary re-ranks from disk (refine disk) or not at all")
    return key + REFINE[refine]


def make_index(dim: int, factory: str):
    """The empty faiss index of a factory key: inner product, except the binary type's Hamming index (faiss builds
    ``LSH`` with L2 only; its scores are Hamming distances either way)."""
    metric = faiss.METRIC_L2 if factory.split(",")[0] == BINARY_FACTORY else faiss.METRIC_INNER_PRODUCT
    return faiss.index_factory(dim, factory, metric)


def is_mergeable(kind: str) -> bool:
    """HNSW graphs cannot be merged: they are built by one task that streams the shards."""
    return kind != "hnsw"


def set_search_params(index, nprobe: int = 16, ef_search: int = 64, k_factor: int = 4) -> None:
    """nprobe (IVF), efSearch (HNSW) and the refine over-fetch factor, wherever they apply."""
    idx = faiss.downcast_index(index)
    if isinstance(idx, (faiss.IndexRefine, faiss.IndexRefineFlat)):
        idx.k_factor = float(k_factor)
        set_search_params(idx.base_index, nprobe, ef_search, k_factor)
        return
    if isinstance(idx, faiss.IndexPreTransform):
        set_search_params(idx.index, nprobe, ef_search, k_factor)
        return
    ivf = faiss.try_extract_index_ivf(idx)
    if ivf is not None:
        ivf.nprobe = min(nprobe, ivf.nlist)
    if isinstance(idx, faiss.IndexHNSW):
        idx.hnsw.efSearch = ef_search


def code_bytes(index) -> int:
    """Bytes per vector of the stored codes (+ refine codes), without ids or structure overhead."""
    idx = faiss.downcast_index(index)
    if isinstance(idx, (faiss.IndexRefine, faiss.IndexRefineFlat)):
        return code_bytes(idx.base_index) + code_bytes(idx.refine_index)
    if isinstance(idx, faiss.IndexPreTransform):
        return code_bytes(idx.index)
    ivf = faiss.try_extract_index_ivf(idx)
    if ivf is not None:
        return int(ivf.code_size)
    if isinstance(idx, faiss.IndexHNSW):
        return code_bytes(idx.storage) + 4 * 2 * idx.hnsw.nb_neighbors(0)
    return int(getattr(idx, "code_size", 4 * idx.d))
