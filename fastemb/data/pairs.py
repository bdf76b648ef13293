"""Training pairs: load, validate and report bad rows.

Pairs format (parquet or jsonl; one file or a folder of files):

=============  ==========  =====================================================
column         required    meaning
=============  ==========  =====================================================
``query``      yes         the query text
``positive``   yes         a relevant text
``negatives``  no          list of hard-negative texts
``scores``     no          teacher scores ``[s(q, positive), s(q, neg_1), ...]``
``weight``     no          the pair's weight in the contrastive loss (> 0; 1 where
                           another file lacks it), e.g. ``fastemb feedback export``'s
                           inverse-propensity click weights
=============  ==========  =====================================================

Rows whose query or positive is null, empty or not a string are skipped and counted by reason;
bad negatives are removed from their row (and counted). Nothing is dropped silently.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fastemb.data.text import bad_text_reason, text_hashes
from fastemb.errors import FastembError

WORDNET_DIR = Path(__file__).resolve().parent.parent / "datasets" / "wordnet"
REQUIRED = ("query", "positive")


class DataError(FastembError, ValueError):
    """Input data that cannot be used; the message says which file and why."""


@dataclass
class RowReport:
    """What was read, kept and skipped (by reason)."""
    read: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    negatives_removed: int = 0
    truncated: Counter = field(default_factory=Counter)  # kept rows cut to a limit (long documents), by what
    by_language: dict = field(default_factory=dict)  # parallel text: per language, what was drawn (data/parallel.py)
    views: Counter = field(default_factory=Counter)  # multi-view items kept with a flaw, by what (data/multi_view.py)
    captions_removed: int = 0  # image-text rows: bad captions removed from a kept list (data/images.py)

    def as_dict(self) -> dict:
        out = {"read": self.read, "kept": self.kept, "skipped": dict(self.skipped),
               "negatives_removed": self.negatives_removed}
        if self.truncated:
            out["truncated"] = dict(self.truncated)
        if self.by_language:
            out["by_language"] = self.by_language
        if self.views:
            out["views"] = dict(self.views)
        if self.captions_removed:
            out["captions_removed"] = self.captions_removed
        return out

    def summary(self) -> str:
        skipped = sum(self.skipped.values())
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items()))
        cut = ", ".join(f"{k}: {v}" for k, v in sorted(self.truncated.items()))
        views = ", ".join(f"{k}: {v}" for k, v in sorted(self.views.items()))
        return (f"{self.read} rows read, {self.kept} kept, {skipped} skipped" + (f" ({detail})" if detail else "")
                + (f"; truncated: {cut}" if cut else "") + (f"; views: {views}" if views else ""))


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".parquet", ".jsonl", ".json"))
        if not files:
            raise DataError(f"{path}: folder holds no .parquet or .jsonl files")
        return files
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    return [path]


def _read_rows(file: Path) -> list[dict]:
    if file.suffix == ".parquet":
        try:
            return pq.read_table(file).to_pylist()
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(f"{file}: unreadable parquet ({err})") from None
    rows = []
    with open(file, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = {"__bad__": f"line {n}: invalid JSON"}
            rows.append(row if isinstance(row, dict) else {"__bad__": "not an object"})
    return rows


def read_rows(path: Path, report: RowReport, check_columns: Callable[[dict], str | None]) -> Iterator[dict]:
    """The rows of every file under ``path``, each counted in ``report.read``; rows that could not be read (a line
    of invalid JSON, ...) are counted in ``report.skipped`` by reason instead of yielded. ``check_columns`` gets each
    file's first row and returns what is wrong with the file's columns (raised as a DataError naming the file) or
    None."""
    for file in _files(path):
        rows = _read_rows(file)
        if rows and "__bad__" not in rows[0] and (problem := check_columns(rows[0])):
            raise DataError(f"{file}: {problem}")
        for row in rows:
            report.read += 1
            if "__bad__" in row:
                report.skipped[row["__bad__"].split(": ", 1)[-1]] += 1
                continue
            yield row


def _pairs_columns(row: dict) -> str | None:
    missing = [c for c in REQUIRED if c not in row]
    return (f"missing column(s) {missing}; pairs need columns query, positive (optional negatives); found "
            f"{sorted(row)}") if missing else None


def resolve_pairs_path(train: str) -> Path:
    """'wordnet' → the shipped WordNet train pairs; anything else is a path."""
    return WORDNET_DIR / "train.parquet" if train == "wordnet" else Path(train).expanduser()


def load_pairs(train: str, max_pairs: int | None = None, hard_negatives: int = 0,
               seed: int = 42, require_negatives: bool = True) -> tuple[list[dict], RowReport]:
    """Read and validate pairs. Returns rows ``{query, positive[, negatives]}`` and the row report.

    With ``hard_negatives=k`` only rows with at least k valid negatives are kept (each truncated to k);
    with ``require_negatives=False`` rows short of k are kept too, with the valid negatives they have (a
    dynamic negative pool mines theirs)."""
    path = resolve_pairs_path(train)
    report = RowReport()
    kept: list[dict] = []
    for row in read_rows(path, report, _pairs_columns):
        reason = next((f"{c} {r}" for c in REQUIRED if (r := bad_text_reason(row.get(c)))), None)
        if reason:
            report.skipped[reason] += 1
            continue
        out = {"query": row["query"], "positive": row["positive"]}
        if "weight" in row:
            if not _positive_number(row["weight"]):
                report.skipped["weight not a positive number"] += 1
                continue
            out["weight"] = float(row["weight"])
        if hard_negatives:
            negs = row.get("negatives") or []
            good = [n for n in negs if bad_text_reason(n) is None]
            report.negatives_removed += len(negs) - len(good)
            if len(good) < hard_negatives and require_negatives:
                report.skipped[f"fewer than {hard_negatives} negatives"] += 1
                continue
            out["negatives"] = good[:hard_negatives]
        kept.append(out)
    if any("weight" in r for r in kept):  # one schema for the Ray Dataset: unweighted rows weigh 1
        for r in kept:
            r.setdefault("weight", 1.0)
    return sample_kept(kept, report, max_pairs, seed, f"{path}: no usable pairs")


def _positive_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def sample_kept(kept: list[dict], report: RowReport, limit: int | None, seed: int,
                empty: str) -> tuple[list[dict], RowReport]:
    """A seeded sample of at most ``limit`` rows, counted in ``report``; no usable row is an error (``empty``)."""
    if limit and len(kept) > limit:
        kept = random.Random(seed).sample(kept, limit)
    report.kept = len(kept)
    if not kept:
        raise DataError(f"{empty} ({report.summary()})")
    return kept, report


def pairs_fingerprint(pairs: list[dict]) -> str:
    """Hash of the pairs' texts in order (queries, positives, negatives)."""
    h = hashlib.sha256()
    for column in ("query", "positive"):
        h.update(text_hashes([p[column] for p in pairs]).tobytes())
    h.update(text_hashes([n for p in pairs for n in p.get("negatives", [])]).tobytes())
    h.update(np.asarray([len(p.get("negatives", [])) for p in pairs], dtype=np.int64).tobytes())
    return h.hexdigest()[:16]
