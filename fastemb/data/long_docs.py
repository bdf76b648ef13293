"""Long-document training rows: a query and the chunks of its relevant document (``data.format: long_docs``).

Input (parquet or jsonl, a file or a folder of files), one row per (query, document):

=============  ==========  ==========================================================================================
column         required    meaning
=============  ==========  ==========================================================================================
``query``      yes         the query text
``document``   one of      the document's text: cut here into token windows of ``model.max_length`` tokens
                           (special tokens included) sharing ``long_docs.overlap`` tokens (fastemb/data/chunking.py)
``chunks``     one of      the document already cut into passages (list of texts; each is truncated at
                           ``model.max_length`` tokens when embedded)
=============  ==========  ==========================================================================================

``python -m fastemb.data.build_manpages`` writes this format (``train.parquet``). Each row becomes
``{query, positive: the document text, chunks: [at most long_docs.max_chunks texts]}``; ``positive`` only
identifies the document (false-negative masking, the data fingerprint, length grouping), the loss sees the chunks
(fastemb/losses/hierarchical.py).

Bad input is counted, never a crash: rows with a bad query, with neither column, or with a document that is empty or
has no token are skipped by reason; documents longer than ``max_chunks`` windows (longer than any limit) are kept
with their first ``max_chunks`` chunks and counted in the report's ``truncated``.
"""
from __future__ import annotations

from fastemb.data.chunking import chunk_texts
from fastemb.data.pairs import RowReport, read_rows, resolve_pairs_path, sample_kept
from fastemb.data.text import bad_text_reason


def _long_doc_columns(row: dict) -> str | None:
    if "query" in row and {"document", "chunks"} & set(row):
        return None
    return f"long documents need columns query and document (or chunks); found {sorted(row)}"


def load_long_docs(train: str, tokenizer, max_length: int, overlap: int, max_chunks: int,
                   max_rows: int | None = None, seed: int = 42) -> tuple[list[dict], RowReport]:
    """Read and validate long-document rows; returns ``{query, positive, chunks}`` rows and the row report (its
    ``truncated``: documents cut at ``max_chunks`` chunks, and the chunks dropped)."""
    path = resolve_pairs_path(train)
    report = RowReport()
    pending: list[dict] = []  # rows with a document to chunk
    kept: list[dict] = []
    for row in read_rows(path, report, _long_doc_columns):
        reason = bad_text_reason(row.get("query"))
        if reason:
            report.skipped[f"query {reason}"] += 1
            continue
        chunks = row.get("chunks")
        if chunks is not None:
            good = [c for c in chunks if bad_text_reason(c) is None]
            if not good:
                report.skipped["chunks empty"] += 1
                continue
            if len(good) > max_chunks:
                report.truncated["documents longer than max_chunks"] += 1
                report.truncated["chunks dropped"] += len(good) - max_chunks
            kept.append({"query": row["query"], "positive": "\n".join(good), "chunks": good[:max_chunks]})
            continue
        reason = bad_text_reason(row.get("document"))
        if reason:
            report.skipped[f"document {reason}"] += 1
            continue
        pending.append(row)
    texts = [r["document"] for r in pending]
    chunked, windows = chunk_texts(tokenizer, texts, max_length, overlap, max_chunks) if texts else ([], [])
    for row, chunks, n in zip(pending, chunked, windows):
        chunks = [c for c in chunks if c.strip()]
        if not chunks:
            report.skipped["document has no token"] += 1
            continue
        if n > max_chunks:
            report.truncated["documents longer than max_chunks"] += 1
            report.truncated["chunks dropped"] += n - max_chunks
        kept.append({"query": row["query"], "positive": row["document"], "chunks": chunks})
    return sample_kept(kept, report, max_rows, seed, f"{path}: no usable long-document rows")
