"""Query → item retrieval over multi-view items: each of an item's views embedded on its own, the item scored from
its view vectors.

The evaluation corpus (``{split}_corpus.parquet``, fastemb/data/build_catalog.py) has, besides ``id`` and ``text``
(the views concatenated, what a single-field model indexes), one column per view. Item scores, all cosine:

- **fused**: the query against the item's fused vector, the mean of its present (unit) view vectors, or with
  ``fuse: weights`` their mean weighted by the views' weights, normalised again: one vector per item in the index;
- **max**: the best of the query's scores against the item's present views: one vector per view in the index;
- **per view** (``ndcg@10_view_<name>``): the query against that view alone, items without it last: how much each
  view carries (no figure for a view that no item has).

Bad input is counted, never a crash: a view the job names that the corpus has no column for
(``views_missing_in_corpus``, every item's such view empty), empty views (``views_present_<name>`` counts those
present), items with no usable view (``items_without_view``: they score below every other item).
"""
from __future__ import annotations

import time

import numpy as np
import pyarrow.parquet as pq

from fastemb.data.eval_sets import EvalSet, eval_dir_path
from fastemb.data.text import bad_text_reason
from fastemb.eval.metrics import ranking_metrics


def view_texts(eval_dir: str, split: str, corpus_ids: list[str], views: list[str]) -> tuple[list[list[str]], list]:
    """Per view, the text of each corpus item (in ``corpus_ids`` order, "" where empty or missing), and the views the
    corpus file has no column for."""
    path = eval_dir_path(eval_dir) / f"{split}_corpus.parquet"
    names = pq.read_schema(path).names
    missing = [v for v in views if v not in names]
    table = pq.read_table(path, columns=["id"] + [v for v in views if v in names]).to_pylist()
    by_id = {str(r["id"]): r for r in table}
    out = []
    for v in views:
        texts = [by_id.get(i, {}).get(v) for i in corpus_ids]
        out.append([t if bad_text_reason(t) is None else "" for t in texts])
    return out, missing


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12, None)


def item_scores(queries: np.ndarray, view_vectors: np.ndarray, present: np.ndarray, how: str,
                weights: list[float] | None = None) -> np.ndarray:
    """(queries, items) scores from unit query vectors (Q, d), unit view vectors (I, V, d) and their presence (I, V):
    ``fused`` (the weighted mean of the present view vectors, normalised) or ``max`` (the best present view); an
    item without a present view scores -inf."""
    w = np.ones(present.shape[1]) if weights is None else np.asarray(weights, dtype=np.float64)
    live = present & (w > 0)
    if how == "fused":
        fused = _unit((view_vectors * (live * w)[..., None]).sum(1))
        scores = queries @ fused.T
    elif how == "max":
        per = np.einsum("qd,ivd->qiv", queries, view_vectors)
        scores = np.where(live[None], per, -np.inf).max(-1)
    else:
        raise ValueError(f"item score: expected fused or max, got {how!r}")
    return np.where(live.any(1)[None], scores, -np.inf)


def _metrics(scores: np.ndarray, data: EvalSet) -> dict:
    top = np.argsort(-scores, axis=1, kind="stable")[:, :100]
    return ranking_metrics([[data.corpus_ids[j] for j in row] for row in top], data.relevant)


def evaluate_multi_view(encoder, data: EvalSet, eval_dir: str, split: str, views: list[str],
                        weights: list[float] | None = None, item_score: str = "fused", fuse: str = "mean") -> dict:
    """nDCG@10, MRR@10, recall@k and MAP@100 of query → item retrieval with ``item_score``; ``ndcg@10_fused``,
    ``ndcg@10_max`` and ``ndcg@10_view_<name>`` with the same vectors; the counts of present and missing views."""
    t0 = time.perf_counter()
    texts, missing = view_texts(eval_dir, split, data.corpus_ids, views)
    present = np.array([[bool(t) for t in per_view] for per_view in texts], dtype=bool).T      # (I, V)
    vectors = np.zeros((len(data.corpus_ids), len(views), encoder.dim), dtype=np.float32)
    for a, per_view in enumerate(texts):
        rows = np.flatnonzero(present[:, a])
        if len(rows):
            vectors[rows, a] = _unit(encoder.encode([per_view[i] for i in rows], batch_size=128))
    encode_s = time.perf_counter() - t0
    queries = _unit(encoder.encode(data.queries, batch_size=128))
    fuse_weights = weights if fuse == "weights" else None
    by_how = {"fused": _metrics(item_scores(queries, vectors, present, "fused", fuse_weights), data),
              "max": _metrics(item_scores(queries, vectors, present, "max", weights), data)}
    per_view = {}
    for a, v in enumerate(views):
        if not present[:, a].any():  # no item has it: no figure (views_present_<name> says 0)
            continue
        only = np.zeros(len(views), dtype=bool)
        only[a] = True
        scores = item_scores(queries, vectors, present & only, "max")
        per_view[f"ndcg@10_view_{v}"] = _metrics(np.where(np.isinf(scores), -1e9, scores), data)["ndcg@10"]
    return {**by_how[item_score], "ndcg@10_fused": by_how["fused"]["ndcg@10"], "ndcg@10_max": by_how["max"]["ndcg@10"],
            **per_view, **{f"views_present_{v}": int(present[:, a].sum()) for a, v in enumerate(views)},
            "items_without_view": int((~present.any(1)).sum()), "views_missing_in_corpus": len(missing),
            "queries": len(data.queries), "corpus": len(data.corpus),
            "view_texts": int(present.sum()), "encode_docs_per_s": len(data.corpus) / encode_s}
