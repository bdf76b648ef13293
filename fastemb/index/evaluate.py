"""Evaluation of compression/index configurations on a labeled split.

Per configuration: recall@10 against exact search over the uncompressed vectors, nDCG@10 on the labels,
bytes per vector (codes in memory; index file size / entries; vectors kept on disk for ``refine: disk``), build
time, and single-query search latency p50/p99 (search and any re-ranking, one thread; query encoding excluded).
The embeddings of the split are computed once by the Ray Data stage and reused by every configuration.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fastemb.data.eval_sets import SHIPPED, eval_dir_path, load_eval_set
from fastemb.eval.metrics import ranking_metrics
from fastemb.index.corpus import scan_corpus
from fastemb.index.searcher import Searcher
from fastemb.index.stages import embed_stage, embeddings_dir, index_shards, staged
from fastemb.spec import IndexJob

logger = logging.getLogger(__name__)

EXACT = {"name": "exact (flat fp32)", "compress": {"method": "none"}, "index": {"type": "flat", "refine": "none"}}


def recall_at_k(found: list[list[str]], truth: list[list[str]], k: int = 10) -> float:
    """Mean |top-k found ∩ top-k exact| / k."""
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / max(1, min(k, len(t))) for f, t in zip(found, truth)]))


def latency_ms(searcher: Searcher, q: np.ndarray, k: int = 10) -> tuple[float, float]:
    """p50 and p99 of one-query-at-a-time search (ms)."""
    faiss.omp_set_num_threads(1)
    times = []
    for row in q:
        t = time.perf_counter()
        searcher.search_vectors(row[None, :], k)
        times.append((time.perf_counter() - t) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def indexes_the_split(spec: IndexJob) -> bool:
    """Whether the job's corpus is the evaluated split's own corpus file (``wordnet:<split>`` for the shipped set, or
    ``<eval folder>/<split>_corpus.parquet`` itself), read whole with the eval format's columns: then the job's
    embeddings are those of the split."""
    ev, c = spec.evaluate, spec.corpus
    if c.id_column != "id" or c.text_column != "text" or spec.chunking.enabled or "://" in c.path:
        return False
    if ev.eval in SHIPPED:
        return ev.eval == "wordnet" and c.path == f"wordnet:{ev.split}"
    own = eval_dir_path(ev.eval) / f"{ev.split}_corpus.parquet"
    return Path(c.path).expanduser().resolve() == own.resolve()


def evaluate_job(spec: IndexJob) -> dict:
    """Evaluate the job's own configuration, its sweep, and exact search; writes ``eval/`` and a PNG."""
    from fastemb.plots import compression_tradeoff

    ev = spec.evaluate
    data = load_eval_set(ev.eval, ev.split, ev.max_queries)
    out = spec.run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    if indexes_the_split(spec):  # reuse the job's embedding shards instead of embedding the split again
        c = spec.corpus
        scan = scan_corpus(c.path, c.id_column, c.text_column, c.on_bad_file)
        emb_dir = embeddings_dir(spec)
    else:
        corpus_file = out / f"{ev.split}_corpus.parquet"
        if not corpus_file.exists():
            pq.write_table(pa.table({"id": data.corpus_ids, "text": data.corpus}), corpus_file)
        scan, emb_dir = scan_corpus(str(corpus_file)), out / "embeddings"
    emb = embed_stage(spec, scan, emb_dir)
    own = {"name": f"job: {spec.index.type}" + (f"+{spec.compress.method}{spec.compress.dim}"
                                                 if spec.compress.method != "none" else "")}
    entries = [EXACT, own, *ev.sweep]
    searcher_encoder, q_full, results, truth = None, None, [], None
    for n, entry in enumerate(entries):
        index, compress = spec.sweep_config(entry)
        cdir = out / f"config-{n:02d}"
        info = index_shards(emb["shard_dirs"], set(), cdir, index, compress, staged(spec),
                            log_level=logging.DEBUG)  # one line per configuration: its results
        cfg = spec.model_dump(mode="json") | {"index": index.model_dump(), "compress": compress.model_dump()}
        (cdir / "manifest.json").write_text(json.dumps({"config": cfg}, default=str))
        searcher = Searcher(cdir, encoder=searcher_encoder)
        if q_full is None:
            q_full = searcher.encoder.encode(data.queries, batch_size=128)
            searcher_encoder = searcher.encoder
        q = searcher.compressor.transform(q_full) if searcher.compressor else q_full
        ranked = [[d for d, _, _ in row] for row in searcher.search_vectors(q, 100)]
        truth = truth or ranked
        p50, p99 = latency_ms(searcher, q[: ev.latency_queries])
        res = {"name": entry.get("name", f"config {n}"), "factory": info["factory"],
               "recall@10": recall_at_k(ranked, truth), "ndcg@10": ranking_metrics(ranked, data.relevant)["ndcg@10"],
               "code_bytes": info["code_bytes_per_vector"], "file_bytes": info["file_bytes_per_vector"],
               "disk_bytes": info["refine"].get("bytes_per_vector_on_disk", 0),
               "build_s": info["build_s"], "p50_ms": p50, "p99_ms": p99}
        results.append(res)
        logger.info(f"eval {res['name']}: recall@10 {res['recall@10']:.3f} nDCG@10 {res['ndcg@10']:.4f} "
                    f"{res['code_bytes']} B/vec" + (f" (+ {res['disk_bytes']} on disk)" if res["disk_bytes"] else "")
                    + f", p50 {p50:.2f} ms")
    exact_ndcg = results[0]["ndcg@10"]
    for r in results:
        r["ndcg_kept"] = r["ndcg@10"] / exact_ndcg if exact_ndcg else None
        r["compression_x"] = results[0]["code_bytes"] / r["code_bytes"]
    png = compression_tradeoff(results, spec.run_dir / "compression.png",
                               title=f"{spec.model.base} on {ev.eval}:{ev.split}")
    return {"split": ev.split, "queries": len(data.queries), "corpus": len(data.corpus), "results": results,
            "plot": str(png)}
