"""Retrieval quality after compression, measured in memory (the objective Ray Tune optimises).

The corpus is encoded once, optionally reduced in dimension (PCA, Matryoshka, autoencoder from
``fastemb.compress``), then stored as a PQ/OPQ code of ``pq_bytes`` bytes; queries stay float
(asymmetric distance, as a faiss PQ index searches).
"""
from __future__ import annotations

import faiss
import numpy as np

from fastemb.compress.base import make_compressor
from fastemb.compress.pq import pq_factory, pq_m_for_bytes, train_pq_codec
from fastemb.data.eval_sets import EvalSet
from fastemb.eval.retrieval import exact_search, metrics_of_hits

# faiss' OPQ training crashes the process (heap corruption) on very small training sets;
# below this many vectors plain PQ is used.
OPQ_MIN_TRAIN = 1024


def compressed_retrieval(corpus_emb: np.ndarray, query_emb: np.ndarray, data: EvalSet, *,
                         method: str = "none", dim: int | None = None, pq_bytes: int | None = None,
                         opq: bool = True) -> dict[str, float]:
    """nDCG@10 (and the other ranking metrics) of a compressed corpus, with bytes per vector and the
    compression factor against float32 vectors of the model's full dimension."""
    full_dim = corpus_emb.shape[1]
    if method != "none":
        comp = make_compressor(method, full_dim, dim).fit(corpus_emb)
        corpus_emb, query_emb = comp.transform(corpus_emb), comp.transform(query_emb)
    d = corpus_emb.shape[1]
    if pq_bytes:
        m = pq_m_for_bytes(d, pq_bytes)
        opq = opq and len(corpus_emb) >= OPQ_MIN_TRAIN
        index = faiss.index_factory(d, pq_factory(d, m, opq=opq), faiss.METRIC_INNER_PRODUCT)
        train_pq_codec(index, np.ascontiguousarray(corpus_emb))
        index.add(np.ascontiguousarray(corpus_emb))
        _, idx = index.search(np.ascontiguousarray(query_emb), min(100, len(corpus_emb)))
        code_bytes = m
    else:
        _, idx = exact_search(query_emb, corpus_emb, 100)
        code_bytes = 4 * d
    out = metrics_of_hits(idx, data)
    out.update(bytes_per_vector=float(code_bytes), compression_x=4.0 * full_dim / code_bytes)
    return out
