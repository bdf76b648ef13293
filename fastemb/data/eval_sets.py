"""Evaluation sets: queries with their relevant ids, searched against a corpus.

Format (a folder): ``{split}_queries.parquet`` with ``id``, ``text``, ``relevant_ids: list[str]`` and
``{split}_corpus.parquet`` with ``id``, ``text``. The shipped WordNet set (``eval: wordnet``) has
2,000 test queries against 20,000 definitions and 500 dev queries against 5,000, all from synsets
that are not in the training split.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from fastemb.data.pairs import WORDNET_DIR, DataError, RowReport
from fastemb.data.text import bad_text_reason


@dataclass
class EvalSet:
    query_ids: list[str]
    queries: list[str]
    relevant: list[set[str]]
    corpus_ids: list[str]
    corpus: list[str]
    report: dict


def _read(path: Path, columns: list[str]) -> list[dict]:
    if not path.exists():
        raise DataError(f"{path}: evaluation file not found")
    table = pq.read_table(path)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {table.column_names}")
    return table.select(columns).to_pylist()


def load_eval_set(eval_dir: str, split: str, max_queries: int | None = None,
                  max_corpus: int | None = None) -> EvalSet:
    """Load one split; bad rows are skipped and counted in ``report``.

    ``max_corpus``: keep every relevant text of the kept queries plus the first others, up to this many
    texts (a cheaper, easier proxy for frequent evaluations such as the dev metric of Tune trials)."""
    base = WORDNET_DIR if eval_dir == "wordnet" else Path(eval_dir).expanduser()
    corpus_rep, query_rep = RowReport(), RowReport()
    corpus_ids, corpus, seen = [], [], set()
    for row in _read(base / f"{split}_corpus.parquet", ["id", "text"]):
        corpus_rep.read += 1
        reason = bad_text_reason(row["text"]) or ("duplicate id" if row["id"] in seen else None)
        if reason:
            corpus_rep.skipped[reason] += 1
            continue
        seen.add(row["id"])
        corpus_ids.append(str(row["id"]))
        corpus.append(row["text"])
    qids, queries, relevant = [], [], []
    for row in _read(base / f"{split}_queries.parquet", ["id", "text", "relevant_ids"]):
        query_rep.read += 1
        rel = {str(r) for r in (row["relevant_ids"] or []) if str(r) in seen}
        reason = bad_text_reason(row["text"]) or (None if rel else "no relevant id in the corpus")
        if reason:
            query_rep.skipped[reason] += 1
            continue
        qids.append(str(row["id"]))
        queries.append(row["text"])
        relevant.append(rel)
    if max_queries:
        qids, queries, relevant = qids[:max_queries], queries[:max_queries], relevant[:max_queries]
    if max_corpus and max_corpus < len(corpus):
        needed = set().union(*relevant) if relevant else set()
        room = max(max_corpus - len(needed), 0)
        keep = [i for i, cid in enumerate(corpus_ids) if cid in needed or (room := room - 1) >= 0]
        corpus_rep.skipped["beyond max_corpus"] += len(corpus) - len(keep)
        corpus_ids, corpus = [corpus_ids[i] for i in keep], [corpus[i] for i in keep]
    corpus_rep.kept, query_rep.kept = len(corpus), len(queries)
    if not queries or not corpus:
        raise DataError(f"{base} ({split}): no usable queries or corpus texts")
    return EvalSet(qids, queries, relevant, corpus_ids, corpus,
                   {"corpus": corpus_rep.as_dict(), "queries": query_rep.as_dict()})


def write_eval_subset(out: str | Path, queries: int, others: int, source: str = "wordnet",
                      splits: tuple[str, ...] = ("dev", "test")) -> Path:
    """A small evaluation folder cut from ``source``: per split, its first ``queries`` queries against the texts
    relevant to them (each query's first relevant id) plus the first ``others`` other texts (tests, quick benches)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    base = WORDNET_DIR if source == "wordnet" else Path(source).expanduser()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split in splits:
        corpus = pq.read_table(base / f"{split}_corpus.parquet")
        kept = pq.read_table(base / f"{split}_queries.parquet").slice(0, queries)
        wanted = pa.array([ids[0] for ids in kept.column("relevant_ids").to_pylist()])
        relevant = corpus.filter(pc.is_in(corpus["id"], value_set=wanted))
        rest = corpus.filter(pc.invert(pc.is_in(corpus["id"], value_set=wanted))).slice(0, others)
        pq.write_table(pa.concat_tables([relevant, rest]), out / f"{split}_corpus.parquet")
        pq.write_table(kept, out / f"{split}_queries.parquet")
    return out
