"""``fastemb search``: top-k documents of query texts in a built index (a folder or its object-store URI)."""
from __future__ import annotations

import json
from pathlib import Path

from fastemb.index.searcher import Searcher
from fastemb.spec import SearchJob


def run_search(spec: SearchJob) -> list[dict]:
    """``[{"query", "hits": [{"id", "score", "text"}, ...]}, ...]``; also written to ``spec.output`` if set."""
    hits = Searcher(spec.index_dir, nprobe=spec.nprobe, ef_search=spec.ef_search).search(spec.queries, spec.k)
    results = [{"query": q, "hits": h} for q, h in zip(spec.queries, hits)]
    if spec.output:
        Path(spec.output).write_text(json.dumps(results, indent=2, ensure_ascii=False))
    return results


def cli_summary(results: list[dict]) -> list[dict]:
    """What ``fastemb search`` prints: every query's hits."""
    return results
