"""Evaluation sets: queries with their relevant ids, searched against a corpus.

Format (a folder): ``{split}_queries.parquet`` with ``id``, ``text``, ``relevant_ids: list[str]`` and
``{split}_corpus.parquet`` with ``id``, ``text``. Shipped sets (``SHIPPED``), named by alias:

- ``wordnet``: 2,000 test queries against 20,000 definitions and 500 dev queries against 5,000, all from synsets
  that are not in the training split (fastemb/data/build_wordnet.py);
- ``debian-descriptions``: the general-domain set, Debian package one-line descriptions against long descriptions,
  1,000 test queries against 2,000 and 300 dev queries against 600 (fastemb/data/build_debian.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fastemb.data.pairs import WORDNET_DIR, DataError, RowReport
from fastemb.data.text import bad_text_reason

DEBIAN_DIR = WORDNET_DIR.parent / "debian-descriptions"
SHIPPED = {"wordnet": WORDNET_DIR, "debian-descriptions": DEBIAN_DIR}  # alias → folder
COLUMNS = {"queries": ["id", "text", "relevant_ids"], "corpus": ["id", "text"]}  # required, per file kind


@dataclass
class EvalSet:
    query_ids: list[str]
    queries: list[str]
    relevant: list[set[str]]
    corpus_ids: list[str]
    corpus: list[str]
    report: dict


def eval_dir_path(eval_dir: str) -> Path:
    """The folder of an evaluation set: a shipped alias (``SHIPPED``) or a path."""
    return SHIPPED[eval_dir] if eval_dir in SHIPPED else Path(eval_dir).expanduser()


def _missing(path: Path, kind: str) -> str | None:
    """What is wrong with one file of a set (reading only its schema), or None."""
    if not path.exists():
        return f"{path}: evaluation file not found"
    names = pq.read_schema(path).names
    missing = [c for c in COLUMNS[kind] if c not in names]
    return f"{path}: missing column(s) {missing}; found {names} (needs {COLUMNS[kind]})" if missing else None


def check_eval_set(eval_dir: str, splits: tuple[str, ...], field: str) -> None:
    """Fail before any work when a split's files are missing or lack a required column; the error names the spec
    ``field`` that gave the set (e.g. ``general.eval``)."""
    base = eval_dir_path(eval_dir)
    for split in splits:
        for kind in COLUMNS:
            problem = _missing(base / f"{split}_{kind}.parquet", kind)
            if problem:
                raise DataError(f"{field}: {problem}")


def _read(path: Path, kind: str) -> list[dict]:
    problem = _missing(path, kind)
    if problem:
        raise DataError(problem)
    return pq.read_table(path, columns=COLUMNS[kind]).to_pylist()


def load_eval_set(eval_dir: str, split: str, max_queries: int | None = None,
                  max_corpus: int | None = None) -> EvalSet:
    """Load one split; bad rows are skipped and counted in ``report``.

    ``max_corpus``: keep every relevant text of the kept queries plus the first others, up to this many
    texts (a cheaper, easier proxy for frequent evaluations such as the dev metric of Tune trials)."""
    base = eval_dir_path(eval_dir)
    corpus_rep, query_rep = RowReport(), RowReport()
    corpus_ids, corpus, seen = [], [], set()
    for row in _read(base / f"{split}_corpus.parquet", "corpus"):
        corpus_rep.read += 1
        reason = bad_text_reason(row["text"]) or ("duplicate id" if row["id"] in seen else None)
        if reason:
            corpus_rep.skipped[reason] += 1
            continue
        seen.add(row["id"])
        corpus_ids.append(str(row["id"]))
        corpus.append(row["text"])
    qids, queries, relevant = [], [], []
    for row in _read(base / f"{split}_queries.parquet", "queries"):
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


def write_subset(eval_dir: str, out: Path, n_queries: int, n_others: int, splits: tuple[str, ...] = ("dev", "test")
                 ) -> str:
    """A smaller evaluation folder cut from a set (real queries and texts, for tests and quick benchmarks): per split,
    its first ``n_queries`` queries against the first relevant text of each plus ``n_others`` other texts."""
    src = eval_dir_path(eval_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split in splits:
        corpus = pq.read_table(src / f"{split}_corpus.parquet", columns=COLUMNS["corpus"])
        queries = pq.read_table(src / f"{split}_queries.parquet", columns=COLUMNS["queries"]).slice(0, n_queries)
        wanted = pa.array([ids[0] for ids in queries.column("relevant_ids").to_pylist()], pa.string())
        relevant = corpus.filter(pc.is_in(corpus["id"], value_set=wanted))
        others = corpus.filter(pc.invert(pc.is_in(corpus["id"], value_set=wanted))).slice(0, n_others)
        pq.write_table(pa.concat_tables([relevant, others]), out / f"{split}_corpus.parquet")
        pq.write_table(queries, out / f"{split}_queries.parquet")
    return str(out)
