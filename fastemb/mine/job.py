"""``fastemb mine``: pairs → pairs with mined hard negatives, a Ray job.

1. Load and validate the pairs (``fastemb.data.pairs.load_pairs``); the corpus is the distinct positives,
   the shipped WordNet definitions or a parquet file (``id``, ``text``).
2. Embed the distinct query texts, positive texts and corpus texts with Ray Data: a pool of the index
   stage's encoder actors (``fastemb.index.embed.EmbedActor``: length bucketing, bad texts skipped with a reason).
3. Search each query's top-K in an exact inner-product faiss index over the L2-normalised corpus, one chunk of
   queries at a time (``fastemb.mine.search``).
4. Skip positives, the query itself, duplicate texts, ranks outside the window and likely false negatives
   (score margin relative to the positive's), then take ``num_negatives`` (``fastemb.mine.select``).
5. Write ``<run>/pairs.parquet`` in the pairs format (``query``, ``positive``, ``negatives``, and ``scores`` =
   ``[s(q, pos), s(q, neg_1), …]`` from the mining model) and ``<run>/mine_report.json`` (skipped candidates by
   reason, rows short of negatives, score statistics, timings).
"""
from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fastemb.data.pairs import WORDNET_DIR, DataError, load_pairs
from fastemb.data.text import text_hash, text_hashes
from fastemb.mine.search import exact_index, normalize_rows
from fastemb.mine.select import NegativeRules, select_for_queries
from fastemb.mine.spec import MineJob


def load_corpus(source: str, positives: list[str]) -> list[str]:
    """Corpus texts: the distinct positives, the WordNet definitions, or a parquet file's ``text`` column."""
    if source == "positives":
        return list(dict.fromkeys(positives))
    path = WORDNET_DIR / "all_definitions.parquet" if source == "wordnet" else Path(source).expanduser()
    if not path.exists():
        raise DataError(f"mining corpus {str(path)!r}: no such file or folder")
    table = pq.read_table(path, columns=["text"])
    return [t for t in table.column("text").to_pylist() if isinstance(t, str) and t.strip()]


def embed_texts(texts: list[str], spec: MineJob) -> tuple[np.ndarray, Counter]:
    """Embed ``texts`` on a pool of Ray Data encoder actors; returns L2-normalised (n, d) float32 in input order
    (rows of skipped texts are zero) and the skipped counts by reason."""
    from fastemb.index.embed import embed_text_list

    m, e = spec.model, spec.embed
    model = {"base": m.base, "pooling": m.pooling, "normalize": m.normalize, "max_length": m.max_length,
             "synonyms": m.synonyms}
    if not texts:
        raise DataError("nothing to embed")
    vectors, skipped = embed_text_list(texts, model, num_actors=e.num_actors, threads_per_actor=e.threads_per_actor,
                                       batch_rows=e.batch_rows, max_batch_tokens=e.max_batch_tokens)
    return normalize_rows(vectors), skipped


def mine(pairs: list[dict], corpus: list[str], vectors: dict[str, np.ndarray], rules: NegativeRules,
         top_k: int, query_chunk: int, seed: int) -> tuple[list[dict], dict]:
    """Pairs with negatives (and scores) from pre-computed, normalised vectors; returns (rows, statistics).

    ``vectors``: ``queries`` (one row per distinct query, in first-seen order), ``positives`` (per distinct
    positive), ``corpus`` (per corpus text)."""
    queries = list(dict.fromkeys(p["query"] for p in pairs))
    qrow = {q: i for i, q in enumerate(queries)}
    positives = list(dict.fromkeys(p["positive"] for p in pairs))
    prow = {t: i for i, t in enumerate(positives)}
    pos_of_query: dict[str, set[int]] = {}
    for p in pairs:
        pos_of_query.setdefault(p["query"], set()).add(text_hash(p["positive"]))
    qv, pv = vectors["queries"], vectors["positives"]
    corpus_hashes = text_hashes(corpus)
    # Lowest positive score of each query (several positives: the most conservative margin).
    min_pos = {q: np.inf for q in queries}
    for p in pairs:
        s = float(qv[qrow[p["query"]]] @ pv[prow[p["positive"]]])
        min_pos[p["query"]] = min(min_pos[p["query"]], s)

    index = exact_index(vectors["corpus"])
    rng = random.Random(seed)
    skipped: Counter = Counter()
    chosen: dict[str, list[tuple[str, float]]] = {}
    for i, rows, scores, picked in select_for_queries(
            index, qv, corpus_hashes, [pos_of_query[q] for q in queries], [text_hash(q) for q in queries],
            [min_pos[q] for q in queries], rules, top_k, query_chunk, skipped, rng):
        chosen[queries[i]] = [(corpus[rows[r]], float(scores[r])) for r in picked]

    out, short, neg_scores, pos_scores = [], 0, [], []
    for p in pairs:
        negs = chosen[p["query"]]
        s_pos = float(qv[qrow[p["query"]]] @ pv[prow[p["positive"]]])
        short += len(negs) < rules.num_negatives
        out.append({"query": p["query"], "positive": p["positive"], "negatives": [t for t, _ in negs],
                    "scores": [s_pos] + [s for _, s in negs]})
        pos_scores.append(s_pos)
        neg_scores.extend(s for _, s in negs)
    stats = {"pairs": len(out), "distinct_queries": len(queries), "corpus": len(corpus),
             "candidates_retrieved": int(len(queries) * min(top_k, len(corpus))),
             "skipped": dict(sorted(skipped.items())),
             "negatives_written": len(neg_scores), "rows_short_of_negatives": short,
             "positive_score": _describe(pos_scores), "negative_score": _describe(neg_scores)}
    return out, stats


def _describe(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    a = np.asarray(values)
    return {"n": int(a.size), "mean": float(a.mean()), "min": float(a.min()), "max": float(a.max())}


def write_pairs(rows: list[dict], path: Path, with_scores: bool) -> None:
    """Write rows in the pairs format (``fastemb/data/pairs.py``)."""
    cols = {"query": pa.array([r["query"] for r in rows], pa.string()),
            "positive": pa.array([r["positive"] for r in rows], pa.string()),
            "negatives": pa.array([r["negatives"] for r in rows], pa.list_(pa.string()))}
    if with_scores:
        cols["scores"] = pa.array([r["scores"] for r in rows], pa.list_(pa.float32()))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.table(cols), tmp)
    tmp.replace(path)


def run_mine(spec: MineJob, log=print) -> dict:
    """Run the mining job; returns the report (also written to ``<run>/mine_report.json``)."""
    from fastemb.ray_env import init_ray

    started = time.time()
    pairs, row_report = load_pairs(spec.data.train, spec.data.max_pairs, seed=spec.mining.seed)
    log(f"[mine] pairs: {row_report.summary()}")
    queries = list(dict.fromkeys(p["query"] for p in pairs))
    positives = list(dict.fromkeys(p["positive"] for p in pairs))
    corpus = load_corpus(spec.data.corpus, positives)
    init_ray(spec.ray.address, spec.ray.num_cpus, spec.embed.threads_per_actor)

    t0 = time.time()
    qv, q_skip = embed_texts(queries, spec)
    pv, p_skip = embed_texts(positives, spec)
    cv, c_skip = (pv, p_skip) if spec.data.corpus == "positives" else embed_texts(corpus, spec)
    embed_s = time.time() - t0
    log(f"[mine] embedded {len(queries)} queries, {len(positives)} positives, {len(corpus)} corpus texts "
        f"in {embed_s:.1f}s")

    m = spec.mining
    rules = m.rules(m.num_negatives)
    t0 = time.time()
    rows, stats = mine(pairs, corpus, {"queries": qv, "positives": pv, "corpus": cv}, rules, m.top_k,
                       m.query_chunk, m.seed)
    search_s = time.time() - t0
    out = spec.run_dir / "pairs.parquet"
    write_pairs(rows, out, m.write_scores)
    report = {"pairs_file": str(out), "input": row_report.as_dict(), **stats,
              "embed_skipped": {"queries": dict(q_skip), "positives": dict(p_skip), "corpus": dict(c_skip)},
              "timing_s": {"embed": round(embed_s, 2), "search_select": round(search_s, 2),
                           "total": round(time.time() - started, 2)},
              "config": spec.model_dump()}
    (spec.run_dir / "mine_report.json").write_text(json.dumps(report, indent=2, default=str))
    skipped = ", ".join(f"{k}: {v}" for k, v in report["skipped"].items()) or "none"
    log(f"[mine] wrote {len(rows)} pairs, {stats['negatives_written']} negatives to {out}; skipped candidates: "
        f"{skipped}; {stats['rows_short_of_negatives']} rows short of {m.num_negatives} negatives")
    return report
