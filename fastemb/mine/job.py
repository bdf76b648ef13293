"""``fastemb mine``: pairs → pairs with mined hard negatives, a Ray job.

1. Load and validate the pairs (``fastemb.data.pairs.load_pairs``); the corpus is the distinct positives,
   the shipped WordNet definitions or a parquet file (``id``, ``text``).
2. Embed the distinct query texts, positive texts and corpus texts with Ray Data: a pool of the index
   stage's encoder actors (``fastemb.index.embed.EmbedActor``: length bucketing, bad texts skipped with a reason).
3. Search each query's top-K in an exact inner-product faiss index over the L2-normalised corpus, one chunk of
   queries at a time (``fastemb.mine.topk``).
4. Optionally (``mining.rescore_with``) rescore with a teacher: the mining model only retrieves. A first chunked
   pass marks the corpus rows that are in some query's top-K; the teacher embeds (same Ray Data path) the queries,
   the positives and only those distinct candidate texts; the second chunked pass re-ranks each query's candidates
   by the teacher's cosine score, so steps 5 and 6 use the teacher's ranking and scores (positive score =
   the teacher's s(q, pos)).
5. Skip positives, the query itself, duplicate texts, ranks outside the window and likely false negatives
   (score margin relative to the positive's), then take ``num_negatives`` (``fastemb.mine.select``).
6. Write ``<run>/pairs.parquet`` in the pairs format (``query``, ``positive``, ``negatives``, and ``scores`` =
   ``[s(q, pos), s(q, neg_1), …]`` from the mining model, or the teacher's when rescoring: what distillation reads)
   and ``<run>/mine_report.json`` (skipped candidates by reason, rows short of negatives, score statistics,
   timings; with a teacher, ``rescore``: texts it embedded, candidates it re-ranked, negatives that differ from the
   mining model's own choice, mean teacher scores of positives and negatives).
"""
from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fastemb.data.pairs import WORDNET_DIR, DataError, load_pairs
from fastemb.data.text import text_hash, text_hashes
from fastemb.mine.topk import candidate_mask, exact_index, normalize_rows
from fastemb.mine.select import NegativeRules, Rescore, select_for_queries
from fastemb.record import keep_spec, reproducible_record
from fastemb.tracking.run import Tracker, track_job
from fastemb.data.pairs import pairs_fingerprint
from fastemb.spec import SPEC_FILE, EmbedSpec, MineJob, ModelSpec, SpecError

logger = logging.getLogger(__name__)


def load_corpus(source: str, positives: list[str]) -> list[str]:
    """Corpus texts: the distinct positives, the WordNet definitions, or a parquet file's ``text`` column."""
    if source == "positives":
        return list(dict.fromkeys(positives))
    path = WORDNET_DIR / "all_definitions.parquet" if source == "wordnet" else Path(source).expanduser()
    if not path.exists():
        raise DataError(f"mining corpus {str(path)!r}: no such file or folder")
    table = pq.read_table(path, columns=["text"])
    return [t for t in table.column("text").to_pylist() if isinstance(t, str) and t.strip()]


def model_dicts(spec: MineJob) -> tuple[dict, dict | None]:
    """The mining model and the rescoring teacher (None without ``mining.rescore_with``) as ``EmbedActor`` model
    dicts (they cross into Ray actors); the teacher is resolved here so that a bad one fails before any embedding,
    naming the field."""
    from fastemb.model.encoder import resolve_model_path

    m, r = spec.model, spec.mining
    miner = m.model_dump()
    if r.rescore_with is None:
        return miner, None
    try:
        resolve_model_path(r.rescore_with)
    except FileNotFoundError as err:
        raise SpecError(f"invalid job spec:\n  mining.rescore_with: {err}") from None
    teacher = ModelSpec(base=r.rescore_with, pooling=r.rescore_pooling, normalize=None,
                        max_length=r.rescore_max_length or m.max_length, synonyms=m.synonyms)
    return miner, teacher.model_dump()


def embed_texts(texts: list[str], model: dict, embed: EmbedSpec) -> tuple[np.ndarray, Counter]:
    """Embed ``texts`` with ``model`` (an ``EmbedActor`` model dict) on a pool of Ray Data encoder actors; returns
    L2-normalised (n, d) float32 in input order (rows of skipped texts are zero) and the skipped counts by reason."""
    from fastemb.index.embed import embed_text_list

    if not texts:
        raise DataError("nothing to embed")
    vectors, skipped = embed_text_list(texts, model, **embed.pool_options())
    return normalize_rows(vectors), skipped


Teacher = Callable[[list[str]], np.ndarray]
"""Texts → their L2-normalised teacher vectors (n, d), in input order."""


def _positive_scores(pairs: list[dict], queries: list[str], qv: np.ndarray, pv: np.ndarray, prow: dict[str, int]
                     ) -> tuple[list[float], list[float]]:
    """s(q, pos) per pair, and per query row the lowest over its positives (the most conservative margin)."""
    qrow = {q: i for i, q in enumerate(queries)}
    per_pair = [float(qv[qrow[p["query"]]] @ pv[prow[p["positive"]]]) for p in pairs]
    lowest = [np.inf] * len(queries)
    for p, s in zip(pairs, per_pair):
        lowest[qrow[p["query"]]] = min(lowest[qrow[p["query"]]], s)
    return per_pair, lowest


def teacher_rescorer(teacher: Teacher, index: faiss.Index, qv: np.ndarray, queries: list[str], positives: list[str],
                     corpus: list[str], top_k: int, query_chunk: int) -> tuple[Rescore, np.ndarray, np.ndarray, dict]:
    """Embed with ``teacher`` the queries, the positives and the distinct corpus texts in some query's top-K (found
    by a chunked pass over ``index`` with the mining vectors ``qv``). Returns the rescore callable for
    ``select_for_queries`` (it counts the candidates it scores in ``info["candidates_reranked"]``), the teacher's
    query and positive vectors, and info (texts embedded, candidate corpus rows, embedding time)."""
    rows = np.flatnonzero(candidate_mask(index, qv, top_k, query_chunk))
    texts = list(dict.fromkeys([*queries, *positives, *(corpus[r] for r in rows)]))
    t0 = time.time()
    tv = teacher(texts)
    info = {"texts_embedded": len(texts), "candidate_corpus_rows": int(rows.size), "candidates_reranked": 0,
            "embed_s": round(time.time() - t0, 2)}
    trow = {t: i for i, t in enumerate(texts)}
    corpus_trow = np.full(len(corpus), -1, dtype=np.int64)
    corpus_trow[rows] = [trow[corpus[r]] for r in rows]
    tq = tv[[trow[q] for q in queries]]

    def rescore(i: int, cand: np.ndarray) -> np.ndarray:
        info["candidates_reranked"] += len(cand)
        return tv[corpus_trow[cand]] @ tq[i]
    return rescore, tq, tv[[trow[p] for p in positives]], info


def mine(pairs: list[dict], corpus: list[str], vectors: dict[str, np.ndarray], rules: NegativeRules,
         top_k: int, query_chunk: int, seed: int, teacher: Teacher | None = None) -> tuple[list[dict], dict]:
    """Pairs with negatives (and scores) from pre-computed, normalised vectors; returns (rows, statistics).

    ``vectors``: ``queries`` (one row per distinct query, in first-seen order), ``positives`` (per distinct
    positive), ``corpus`` (per corpus text). With ``teacher`` the candidates these vectors retrieve are re-ranked and
    selected by the teacher's scores (:func:`teacher_rescorer`), which are also the scores written."""
    queries = list(dict.fromkeys(p["query"] for p in pairs))
    positives = list(dict.fromkeys(p["positive"] for p in pairs))
    prow = {t: i for i, t in enumerate(positives)}
    pos_of_query: dict[str, set[int]] = {}
    for p in pairs:
        pos_of_query.setdefault(p["query"], set()).add(text_hash(p["positive"]))
    qv = vectors["queries"]
    corpus_hashes = text_hashes(corpus)
    index = exact_index(vectors["corpus"], top_k)

    def choose(positive_scores: list[float], skipped: Counter, rescore: Rescore | None = None
               ) -> dict[str, list[tuple[str, float]]]:
        found = select_for_queries(index, qv, corpus_hashes, [pos_of_query[q] for q in queries],
                                   [text_hash(q) for q in queries], positive_scores, rules, top_k, query_chunk,
                                   skipped, random.Random(seed), rescore)
        return {queries[i]: [(corpus[rows[r]], float(scores[r])) for r in picked] for i, rows, scores, picked in found}

    skipped: Counter = Counter()
    pair_pos, lowest_pos = _positive_scores(pairs, queries, qv, vectors["positives"], prow)
    rescored: dict | None = None
    if teacher is None:
        chosen = choose(lowest_pos, skipped)
    else:
        rescore, tq, tp, rescored = teacher_rescorer(teacher, index, qv, queries, positives, corpus, top_k,
                                                     query_chunk)
        miner_pos = pair_pos
        pair_pos, teacher_lowest = _positive_scores(pairs, queries, tq, tp, prow)
        chosen = choose(teacher_lowest, skipped, rescore)
        alone = choose(lowest_pos, Counter())      # what the mining model alone would have chosen
        rescored["negatives_changed"] = sum(len({t for t, _ in chosen[q]} - {t for t, _ in alone[q]})
                                            for q in queries)
        rescored["miner_positive_score_mean"] = float(np.mean(miner_pos))

    out, short, neg_scores = [], 0, []
    for p, s_pos in zip(pairs, pair_pos):
        negs = chosen[p["query"]]
        short += len(negs) < rules.num_negatives
        out.append({"query": p["query"], "positive": p["positive"], "negatives": [t for t, _ in negs],
                    "scores": [s_pos] + [s for _, s in negs]})
        neg_scores.extend(s for _, s in negs)
    stats = {"pairs": len(out), "distinct_queries": len(queries), "corpus": len(corpus),
             "candidates_retrieved": int(len(queries) * min(top_k, len(corpus))),
             "skipped": dict(sorted(skipped.items())),
             "negatives_written": len(neg_scores), "rows_short_of_negatives": short,
             "positive_score": _describe(pair_pos), "negative_score": _describe(neg_scores)}
    if rescored is not None:
        rescored["negatives_changed_fraction"] = rescored["negatives_changed"] / max(1, len(neg_scores))
        rescored["positive_score_mean"] = stats["positive_score"].get("mean")
        rescored["negative_score_mean"] = stats["negative_score"].get("mean")
        stats["rescore"] = rescored
    return out, stats


def _describe(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    a = np.asarray(values)
    return {"n": int(a.size), "mean": float(a.mean()), "min": float(a.min()), "max": float(a.max())}


def _mean(described: dict) -> str:
    return f"{described['mean']:.3f}" if "mean" in described else "n/a"


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


def run_mine(spec: MineJob) -> dict:
    """Run the mining job; returns the report (also written to ``<run>/mine_report.json``). With
    ``tracking.mlflow`` the job is an MLflow run: its counts and timings as metrics, the report as an artifact."""
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    keep_spec(spec)
    tracker = track_job(spec)
    with tracker.running():
        report = _mine(spec, tracker)
        tracker.log_metrics({**{k: v for k, v in report.items() if k in ("pairs", "negatives_written",
                                                                          "rows_short_of_negatives")},
                             **{f"seconds_{k}": v for k, v in report["timing_s"].items()}})
        tracker.log_artifacts([spec.run_dir / "mine_report.json", spec.run_dir / SPEC_FILE])
    return report


def _mine(spec: MineJob, tracker: Tracker) -> dict:
    from fastemb.ray_env import init_ray

    started = time.time()
    miner, teacher_model = model_dicts(spec)
    pairs, row_report = load_pairs(spec.data.train, spec.data.max_pairs, seed=spec.mining.seed)
    logger.info(f"pairs: {row_report.summary()}")
    tracker.log_record(reproducible_record(spec, pairs_fingerprint(pairs)))
    queries = list(dict.fromkeys(p["query"] for p in pairs))
    positives = list(dict.fromkeys(p["positive"] for p in pairs))
    corpus = load_corpus(spec.data.corpus, positives)
    init_ray(spec.ray.address, spec.ray.num_cpus, spec.embed.threads_per_actor)

    t0 = time.time()
    qv, q_skip = embed_texts(queries, miner, spec.embed)
    pv, p_skip = embed_texts(positives, miner, spec.embed)
    cv, c_skip = (pv, p_skip) if spec.data.corpus == "positives" else embed_texts(corpus, miner, spec.embed)
    embed_s = time.time() - t0
    logger.info(f"embedded {len(queries)} queries, {len(positives)} positives, {len(corpus)} corpus texts "
                f"in {embed_s:.1f}s")

    m = spec.mining
    embed_skipped = {"queries": dict(q_skip), "positives": dict(p_skip), "corpus": dict(c_skip)}
    teacher = None
    if teacher_model is not None:
        def teacher(texts: list[str]) -> np.ndarray:
            vectors, skips = embed_texts(texts, teacher_model, spec.embed)
            embed_skipped["rescore_teacher"] = dict(skips)
            return vectors
    rules = NegativeRules.from_spec(m, m.num_negatives)
    t0 = time.time()
    rows, stats = mine(pairs, corpus, {"queries": qv, "positives": pv, "corpus": cv}, rules, m.top_k,
                       m.query_chunk, m.seed, teacher)
    search_s = time.time() - t0
    timing = {"embed": round(embed_s, 2)}
    if "rescore" in stats:
        r = stats["rescore"] = {"teacher": m.rescore_with, **stats["rescore"]}
        timing["rescore_embed"] = r["embed_s"]
        search_s -= r["embed_s"]
        logger.info(f"rescored with {m.rescore_with}: embedded {r['texts_embedded']} texts in {r['embed_s']:.1f}s, "
                    f"re-ranked {r['candidates_reranked']} candidates; {r['negatives_changed']} of "
                    f"{stats['negatives_written']} negatives differ from the mining model's own choice; mean teacher "
                    f"score positive {_mean(stats['positive_score'])}, negative {_mean(stats['negative_score'])}")
    out = spec.run_dir / "pairs.parquet"
    write_pairs(rows, out, m.write_scores)
    report = {"pairs_file": str(out), "input": row_report.as_dict(), **stats, "embed_skipped": embed_skipped,
              "timing_s": {**timing, "search_select": round(search_s, 2), "total": round(time.time() - started, 2)},
              "config": spec.model_dump()}
    (spec.run_dir / "mine_report.json").write_text(json.dumps(report, indent=2, default=str))
    skipped = ", ".join(f"{k}: {v}" for k, v in report["skipped"].items()) or "none"
    logger.info(f"wrote {len(rows)} pairs, {stats['negatives_written']} negatives to {out}; skipped candidates: "
                f"{skipped}; {stats['rows_short_of_negatives']} rows short of {m.num_negatives} negatives")
    return report


def cli_summary(report: dict) -> dict:
    """What ``fastemb mine`` prints: the pairs file and its counts, the timings."""
    return {k: report[k] for k in ("pairs_file", "pairs", "negatives_written", "skipped", "rows_short_of_negatives",
                                   "timing_s")}
