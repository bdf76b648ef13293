"""Retrieval evaluation of an encoder on an evaluation set (exact search with faiss)."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import faiss
import numpy as np

from fastemb.data.eval_sets import EvalSet, eval_dir_path, load_eval_set
from fastemb.eval.cache import shared_metrics, weights_fingerprint
from fastemb.eval.metrics import alignment, ranking_metrics, uniformity
from fastemb.model.batching import Forward, embed_sequences
from fastemb.model.encoder import Encoder, resolve_model_path
from fastemb.model.static import StaticEncoder, is_static
from fastemb.record import files_fingerprint

if TYPE_CHECKING:
    from fastemb.spec.sections import DataSpec, ModelSpec


def exact_search(query_emb: np.ndarray, corpus_emb: np.ndarray, k: int, normalized: bool = True
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k inner-product (cosine when ``normalized``) search; returns (scores, indices)."""
    if not normalized:
        query_emb, corpus_emb = query_emb.copy(), corpus_emb.copy()
        faiss.normalize_L2(query_emb)
        faiss.normalize_L2(corpus_emb)
    index = faiss.IndexFlatIP(corpus_emb.shape[1])
    index.add(np.ascontiguousarray(corpus_emb, dtype=np.float32))
    return index.search(np.ascontiguousarray(query_emb, dtype=np.float32), min(k, corpus_emb.shape[0]))


def metrics_of_hits(idx: np.ndarray, data: EvalSet) -> dict[str, float]:
    """Ranking metrics of faiss result indices (rows of corpus positions, -1 for none) on ``data``."""
    ranked = [[data.corpus_ids[j] for j in row if j >= 0] for row in idx]
    return ranking_metrics(ranked, data.relevant)


def evaluate(encoder: Encoder | StaticEncoder, data: EvalSet, batch_size: int = 128, show_progress: bool = False
             ) -> dict[str, float]:
    """nDCG@10, MRR@10, recall@{1,10,100}, MAP@100, alignment, uniformity and encode throughput."""
    t0 = time.perf_counter()
    corpus_emb = encoder.encode(data.corpus, batch_size=batch_size, show_progress=show_progress)
    encode_s = time.perf_counter() - t0
    query_emb = encoder.encode(data.queries, batch_size=batch_size)
    _, idx = exact_search(query_emb, corpus_emb, 100, normalized=encoder.normalize)
    metrics = metrics_of_hits(idx, data)
    pos = {cid: i for i, cid in enumerate(data.corpus_ids)}
    first_rel = np.array([pos[sorted(r)[0]] for r in data.relevant])
    metrics["alignment"] = alignment(query_emb, corpus_emb[first_rel])
    metrics["uniformity"] = uniformity(corpus_emb)
    metrics["encode_docs_per_s"] = len(data.corpus) / encode_s
    metrics["queries"], metrics["corpus"] = len(data.queries), len(data.corpus)
    return metrics


def evaluate_forward(encoder: Encoder, forward: Forward, data: EvalSet) -> dict[str, float]:
    """Ranking metrics (nDCG@10, MRR@10, recall@k, MAP@100) of ``encoder``'s tokenizer with another forward pass
    (an ONNX or int8 graph of it): texts truncated at ``encoder.max_length``, length-bucketed batches."""
    tok = encoder.tokenizer

    def vectors(texts: list[str]) -> np.ndarray:
        seqs = tok(texts, truncation=True, max_length=encoder.max_length)["input_ids"]
        return embed_sequences(forward, seqs, tok.pad_token_id or 0, encoder.dim)

    _, idx = exact_search(vectors(data.queries), vectors(data.corpus), 100, normalized=encoder.normalize)
    return {**metrics_of_hits(idx, data), "queries": len(data.queries), "corpus": len(data.corpus)}


def evaluate_model(model: ModelSpec, data: DataSpec, split: str = "test", path: str | None = None,
                   show_progress: bool = False, long_docs: dict | None = None, multi_view: dict | None = None
                   ) -> dict[str, float]:
    """Metrics of the model a spec's ``model`` section names (or of the folder ``path``, loaded with that section's
    settings) on ``split`` of ``data.eval`` (at most ``data.test_queries`` queries). A static folder (``fastemb
    static``) runs as a ``StaticEncoder`` (its own pooling and normalisation; ``max_length`` applies).
    ``long_docs``: the corpus is long documents, scored per document from their chunks (the options of
    ``fastemb.eval.long_docs.evaluate_long_docs``: ``LongDocsSpec.eval_options``). ``multi_view``: the corpus is
    multi-view items, scored from their views (the options of ``fastemb.eval.multi_view.evaluate_multi_view``:
    ``MultiViewSpec.eval_options``)."""
    folder = resolve_model_path(path or model.base)
    files = [eval_dir_path(data.eval) / f"{split}_{kind}.parquet" for kind in ("corpus", "queries")]
    settings = model.model_dump(mode="json", exclude={"base"})
    key = {"weights": weights_fingerprint(folder), "settings": settings, "split": split,
           "max_queries": data.test_queries, "eval": files_fingerprint([f for f in files if f.exists()]),
           "synonyms": files_fingerprint([model.synonyms]) if model.synonyms else None}
    if long_docs:
        key["long_docs"] = long_docs
    if multi_view:
        key["multi_view"] = multi_view

    def measure() -> dict[str, float]:
        encoder = (StaticEncoder.load(folder, model.max_length) if is_static(folder)
                   else Encoder.from_spec(model, path))
        eval_set = load_eval_set(data.eval, split, data.test_queries)
        if long_docs:
            from fastemb.eval.long_docs import evaluate_long_docs

            return evaluate_long_docs(encoder, eval_set, **long_docs)
        if multi_view:
            from fastemb.eval.multi_view import evaluate_multi_view

            return evaluate_multi_view(encoder, eval_set, split=split, **multi_view)
        return evaluate(encoder, eval_set, show_progress=show_progress)

    return shared_metrics(key, measure)
