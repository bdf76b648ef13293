"""``fastemb feedback export``: read a serve job's search and click logs, turn clicks into weighted pairs
(fastemb/feedback/clicks.py), look the result ids up in the served corpus and write the pairs file that
``data.train`` reads (query, positive, negatives, plus ``weight``: InfoNCE weighs each pair's term by it)."""
from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from fastemb.data.pairs import DataError
from fastemb.data.text import bad_text_reason
from fastemb.feedback.clicks import ClickCounts, click_pairs, read_event_lines
from fastemb.index.corpus import resolve_corpus
from fastemb.spec import FeedbackJob
from fastemb.storage import write_json

logger = logging.getLogger(__name__)


def corpus_texts(corpus: str, id_column: str, text_column: str, wanted: set[str]) -> dict[str, str]:
    """id → text for the ``wanted`` ids of a corpus as the index job reads it (``wordnet``, ``wordnet:<split>``, a
    parquet file, folder or URI), a column pair at a time."""
    fs, files = resolve_corpus(corpus)
    out: dict[str, str] = {}
    for f in files:
        names = pq.read_schema(f, filesystem=fs).names
        missing = [c for c in (id_column, text_column) if c not in names]
        if missing:
            raise DataError(f"corpus: {f}: no column(s) {missing} (found {names}); set id_column / text_column")
        table = pq.read_table(f, columns=[id_column, text_column], filesystem=fs)
        for i, t in zip(table.column(id_column).to_pylist(), table.column(text_column).to_pylist()):
            if str(i) in wanted and bad_text_reason(t) is None:
                out[str(i)] = t
    return out


def run_feedback(spec: FeedbackJob) -> dict:
    """Export the pairs; returns (and writes to ``spec.report``) the output path and the counts."""
    counts = ClickCounts()
    events = read_event_lines(spec.feedback_dir, counts)
    if not events:
        raise DataError(f"feedback_dir: {spec.feedback_dir}: no events (events-*.jsonl from a serve job)")
    pairs, counts = click_pairs(events, arms=spec.arms, min_impressions=spec.min_impressions,
                                negatives=spec.negatives, max_negatives=spec.max_negatives,
                                propensity_eta=spec.propensity_eta, max_weight=spec.max_weight, counts=counts)
    wanted = {p["positive_id"] for p in pairs} | {d for p in pairs for d in p["negative_ids"]}
    texts = corpus_texts(spec.corpus, spec.id_column, spec.text_column, wanted)
    rows = []
    for p in pairs:
        if p["positive_id"] not in texts:
            counts.dropped["clicked id not in the corpus (or its text is empty)"] += 1
            continue
        negatives = [texts[d] for d in p["negative_ids"] if d in texts]
        counts.noted["negative id not in the corpus"] += len(p["negative_ids"]) - len(negatives)
        rows.append({"query": p["query"], "positive": texts[p["positive_id"]], "negatives": negatives,
                     "weight": p["weight"], "positive_id": p["positive_id"], "clicks": p["clicks"],
                     "impressions": p["impressions"]})
    counts.noted = +counts.noted  # drop zero counts
    if not rows:
        raise DataError(f"feedback: no pairs from {spec.feedback_dir} ({counts.summary()})")
    mean = sum(r["weight"] for r in rows) / len(rows)
    for r in rows:
        r["weight"] /= mean
    counts.pairs = len(rows)
    out = Path(spec.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out)
    logger.info(f"{counts.summary()}; written to {out}")
    result = {"output": str(out), **counts.as_dict()}
    if spec.report:
        write_json(spec.report, result)
    return result


def cli_summary(result: dict) -> dict:
    """What ``fastemb feedback export`` prints: the output and the counts."""
    return result
