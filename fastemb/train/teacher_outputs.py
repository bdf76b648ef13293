"""Teacher outputs for distillation, computed once with Ray Data and stored next to the pairs.

Before training, every distinct text of the pairs (queries, positives, hard negatives) is embedded with the
teacher on a pool of the index stage's encoder actors (``fastemb.index.embed.embed_text_list``). The stage writes
``<run>/teacher/pairs.parquet``: the pairs plus

* ``teacher_scores``: ``[t(q, positive), t(q, neg_1), …]``, the teacher's similarity (dot product of its outputs,
  i.e. cosine for a normalising teacher such as all-mpnet-base-v2), used by the KL and MarginMSE terms;
* ``teacher_query``, ``teacher_positive``: the teacher's embeddings, written only when a configured term declares
  that it reads them (``fastemb/train/distill_terms.py``: embedding MSE; in-batch KL candidates, whose teacher scores
  are ``t_q · t_p'``),

When the configured terms read nothing but ``teacher_positive`` (``distill.embedding_mse.target: positive``,
multilingual distillation), only the positives (the English texts) are embedded and no scores are stored: the
translations never go through the teacher.

The stage also writes ``<run>/teacher/manifest.json`` with the key (teacher, pooling, length, synonyms, a fingerprint of the pairs,
the columns) and timings. A rerun (a resumed job, a second job pointing at the same run folder) whose key matches
reads the file instead of embedding again. Per-token terms (hidden states, attention) cannot be stored this way;
they run the teacher online in the training loop (``fastemb/train/distill.py``).
"""
from __future__ import annotations

import json
import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fastemb.data.pairs import pairs_fingerprint
from fastemb.errors import FastembError
from fastemb.spec import TrainJob
from fastemb.train.distill_terms import TEACHER_EMBEDDINGS, TEACHER_POSITIVE, TEACHER_SCORES, stored_teacher_columns

TEACHER_DIR = "teacher"
logger = logging.getLogger(__name__)


class TeacherOutputError(FastembError, RuntimeError):
    """The teacher could not embed some training texts; the message gives the reasons."""


def teacher_model(spec: TrainJob) -> dict:
    """The teacher as an ``EmbedActor`` model dict (the student's synonym dictionary applies to it too)."""
    d = spec.distill
    return {"base": d.teacher, "pooling": d.teacher_pooling, "normalize": None,
            "max_length": d.teacher_max_length or spec.model.max_length, "synonyms": spec.model.synonyms}


def needs_teacher_embeddings(spec: TrainJob) -> bool:
    """Whether some configured term reads the teacher's query/positive embeddings (the scores are always stored)."""
    return any(c in TEACHER_EMBEDDINGS for c in stored_teacher_columns(spec))


def positives_only(spec: TrainJob) -> bool:
    """Whether the configured terms read only the teacher's embeddings of the positives (no scores, no queries)."""
    return stored_teacher_columns(spec) == [TEACHER_POSITIVE]


def _cache_key(spec: TrainJob, pairs: list[dict]) -> dict:
    from fastemb.accelerator import pool_precision

    key = {"teacher": teacher_model(spec), "pairs": pairs_fingerprint(pairs), "n_pairs": len(pairs),
           "embeddings": needs_teacher_embeddings(spec)}
    if positives_only(spec):
        key["sides"] = "positive"
    e = spec.distill.embed
    if pool_precision(e.precision, e.num_gpus) != "fp32":  # GPU actors' half-precision vectors: stored apart
        key["precision"] = pool_precision(e.precision, e.num_gpus)
    return key


def score_pairs(pairs: list[dict], vectors: np.ndarray, row: dict[str, int], with_embeddings: bool) -> pa.Table:
    """The pairs with teacher scores (and embeddings) from per-text teacher vectors ``vectors[row[text]]``."""
    q = vectors[[row[p["query"]] for p in pairs]]
    pos = vectors[[row[p["positive"]] for p in pairs]]
    scores = []
    for i, p in enumerate(pairs):
        cands = np.stack([pos[i]] + [vectors[row[n]] for n in p.get("negatives", [])])
        scores.append((cands @ q[i]).astype(np.float32))
    cols = {"query": pa.array([p["query"] for p in pairs], pa.string()),
            "positive": pa.array([p["positive"] for p in pairs], pa.string())}
    if any("negatives" in p for p in pairs):
        cols["negatives"] = pa.array([p.get("negatives", []) for p in pairs], pa.list_(pa.string()))
    cols[TEACHER_SCORES] = pa.array([s.tolist() for s in scores], pa.list_(pa.float32()))
    if with_embeddings:
        dim = vectors.shape[1]
        for name, mat in zip(TEACHER_EMBEDDINGS, (q, pos)):
            cols[name] = pa.FixedSizeListArray.from_arrays(pa.array(mat.astype(np.float32).reshape(-1)), dim)
    return pa.table(cols)


def positive_vectors(pairs: list[dict], vectors: np.ndarray, row: dict[str, int]) -> pa.Table:
    """The pairs with the teacher's embedding of each positive (``teacher_positive``) only."""
    mat = vectors[[row[p["positive"]] for p in pairs]].astype(np.float32)
    return pa.table({"query": pa.array([p["query"] for p in pairs], pa.string()),
                     "positive": pa.array([p["positive"] for p in pairs], pa.string()),
                     TEACHER_POSITIVE: pa.FixedSizeListArray.from_arrays(pa.array(mat.reshape(-1)), mat.shape[1])})


def compute_teacher_outputs(spec: TrainJob, pairs: list[dict], subdir: str = TEACHER_DIR) -> tuple[list[dict], dict]:
    """Pairs with teacher columns, from ``<run>/<subdir>/`` (``teacher/``; one folder per task of a multi-task job)
    when stored for the same key, else embedded with Ray Data (Ray must be initialised) and stored. Returns (rows,
    info: path, reused, texts, embed_s)."""
    from fastemb.index.embed import embed_text_list

    out_dir = spec.run_dir / subdir
    path, manifest = out_dir / "pairs.parquet", out_dir / "manifest.json"
    key = _cache_key(spec, pairs)
    if manifest.exists() and path.exists():
        stored = json.loads(manifest.read_text())
        if stored.get("key") == key:
            logger.info(f"teacher outputs reused from {path}")
            return pq.read_table(path).to_pylist(), {**stored["info"], "path": str(path), "reused": True}
    only_positives = positives_only(spec)
    texts = list(dict.fromkeys([p["positive"] for p in pairs] if only_positives else
                               [t for p in pairs for t in (p["query"], p["positive"], *p.get("negatives", []))]))
    d = spec.distill
    logger.info(f"embedding {len(texts)} distinct texts with the teacher {d.teacher} (Ray Data, "
                f"{d.embed.num_actors} actors)")
    t0 = time.time()
    vectors, skipped = embed_text_list(texts, teacher_model(spec), **d.embed.pool_options())
    if skipped:
        raise TeacherOutputError(f"the teacher skipped {sum(skipped.values())} training texts "
                                 f"({dict(skipped)}); clean the pairs or drop those rows")
    embed_s = time.time() - t0
    row = {t: i for i, t in enumerate(texts)}
    table = positive_vectors(pairs, vectors, row) if only_positives else \
        score_pairs(pairs, vectors, row, key["embeddings"])
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    info = {"texts": len(texts), "dim": int(vectors.shape[1]), "embed_s": round(embed_s, 2),
            "columns": table.column_names}
    manifest.write_text(json.dumps({"key": key, "info": info}, indent=2))
    logger.info(f"teacher outputs for {len(pairs)} pairs in {embed_s:.1f}s → {path}")
    return table.to_pylist(), {**info, "path": str(path), "reused": False}

