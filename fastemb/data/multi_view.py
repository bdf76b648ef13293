"""Multi-view training rows: a query and the views of its item (``data.format: multi_view``).

Input (parquet or jsonl, a file or a folder of files), one row per (query, item):

=============  ==========  ==========================================================================================
column         required    meaning
=============  ==========  ==========================================================================================
``query``      yes         the query text
``views``      yes         the item's views, ``{view name: text}`` (a parquet struct or a JSON object); the names the
                           job trains are ``multi_view.views``
=============  ==========  ==========================================================================================

``python -m fastemb.data.build_catalog`` writes this format (``train.parquet``). Each row becomes
``{query, positive: the item's views concatenated (fastemb.data.build_catalog.concat_text's order), views: [one
text per multi_view.views name, "" where missing]}``; ``positive`` only identifies the item (false-negative
masking, the data fingerprint, length grouping), the loss sees the views (fastemb/losses/multi_view.py).

Bad input is counted, never a crash. Skipped by reason: a bad query, a row whose ``views`` is not an object, an item
with no usable view of the job's. Kept and counted in the report's ``pairs.views``: empty views (``empty view
<name>``: null, empty or not a string; the loss masks them), view names the job does not train (``unknown view
<name>``: ignored), items left with a single view (``single view``: trained by the query ↔ view term only).
"""
from __future__ import annotations

from fastemb.data.pairs import RowReport, read_rows, resolve_pairs_path, sample_kept
from fastemb.data.text import bad_text_reason

ITEM_ORDER = ("title", "attributes", "tags", "description")  # the concatenated form: these first, others after


def _columns(row: dict) -> str | None:
    if "query" in row and "views" in row:
        return None
    return f"multi-view items need columns query and views (an object of view name: text); found {sorted(row)}"


def item_text(views: dict[str, str]) -> str:
    """An item's views as one text (title, attributes, tags, description, then other views by name)."""
    order = [v for v in ITEM_ORDER if v in views] + sorted(v for v in views if v not in ITEM_ORDER)
    return "\n".join(views[v] for v in order)


def load_multi_view(train: str, views: list[str], max_rows: int | None = None, seed: int = 42
                    ) -> tuple[list[dict], RowReport]:
    """Read and validate multi-view rows; returns ``{query, positive, views}`` rows (``views``: one text per name
    of ``views``, "" where missing) and the row report (its ``views``: what was kept with a flaw)."""
    path = resolve_pairs_path(train)
    report = RowReport()
    kept: list[dict] = []
    known = set(views)
    for row in read_rows(path, report, _columns):
        reason = bad_text_reason(row.get("query"))
        if reason:
            report.skipped[f"query {reason}"] += 1
            continue
        given = row.get("views")
        if not isinstance(given, dict):
            report.skipped["views not an object"] += 1
            continue
        good: dict[str, str] = {}
        for name, text in given.items():
            if name not in known:
                if bad_text_reason(text) is None:
                    report.views[f"unknown view {name}"] += 1
                continue
            if bad_text_reason(text) is None:
                good[name] = text
        for name in views:
            if name not in good:
                report.views[f"empty view {name}"] += 1
        if not good:
            report.skipped["no usable view"] += 1
            continue
        if len(good) == 1 and len(views) > 1:
            report.views["single view"] += 1
        kept.append({"query": row["query"], "positive": item_text(good), "views": [good.get(v, "") for v in views]})
    return sample_kept(kept, report, max_rows, seed, f"{path}: no usable multi-view rows")
