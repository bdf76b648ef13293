"""Raw domain text for unsupervised pre-training, SimCSE-style (Gao et al., 2021, "SimCSE: Simple Contrastive
Learning of Sentence Embeddings").

With ``data.format: raw`` each text is its own positive: a row becomes ``{query: text, positive: text}``, the
training loop embeds both sides in train mode, so the two passes see different dropout masks, and InfoNCE takes
the other texts of the global batch as negatives (exact duplicates are removed here; equal texts in one batch
would be false negatives, which InfoNCE masks anyway).

Input: parquet or jsonl, a file or a folder of files, with a text column (``data.text_column``, default
``text``), e.g. ``python -m fastemb.data.manpages --out pages.parquet``; ``wordnet`` means the shipped
117k WordNet definitions (``fastemb/datasets/wordnet/all_definitions.parquet``: unlabeled text of the task's
domain, corpus included, as in unsupervised domain adaptation). Rows whose text is null, empty or not a string
are skipped and counted by reason, like bad pairs.
"""
from __future__ import annotations

from pathlib import Path

from fastemb.data.pairs import WORDNET_DIR, RowReport, read_rows, sample_kept
from fastemb.data.text import bad_text_reason


def resolve_raw_path(train: str) -> Path:
    """'wordnet' → the shipped WordNet definitions; anything else is a path."""
    return WORDNET_DIR / "all_definitions.parquet" if train == "wordnet" else Path(train).expanduser()


def load_raw_texts(train: str, text_column: str = "text", max_texts: int | None = None,
                   seed: int = 42) -> tuple[list[dict], RowReport]:
    """Distinct texts as self-positive rows ``{query: t, positive: t}`` and the row report."""
    path = resolve_raw_path(train)
    report = RowReport()
    seen: set[str] = set()
    kept: list[dict] = []

    def check_columns(row: dict) -> str | None:
        return None if text_column in row else f"no column {text_column!r} (data.text_column); found {sorted(row)}"

    for row in read_rows(path, report, check_columns):
        text = row.get(text_column)
        reason = bad_text_reason(text)
        if reason is None and text in seen:
            reason = "duplicate"
        if reason:
            report.skipped[f"{text_column} {reason}" if reason != "duplicate" else reason] += 1
            continue
        seen.add(text)
        kept.append({"query": text, "positive": text})
    return sample_kept(kept, report, max_texts, seed, f"{path}: no usable texts in column {text_column!r}")
