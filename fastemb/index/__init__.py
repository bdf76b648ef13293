"""Corpus embedding with Ray Data, sharded faiss index builds, search, and compression evaluation.

Modules: ``corpus`` (input files, validation), ``embed`` (Ray Data encoder actors, length bucketing),
``chunking`` (long documents), ``shards`` (embedding shards, duplicates, id map), ``factory`` (index
configurations), ``binary`` (the sign-bit index type), ``refine`` (re-ranking from vectors on disk), ``build``
(train / parallel add / merge on Ray), ``stages`` (the job's embedding and build stages), ``searcher`` (queries →
documents), ``evaluate`` (compression trade-offs), ``job`` (the ``fastemb index`` job).
"""
from fastemb.index.searcher import Searcher, search

__all__ = ["Searcher", "search"]
