"""Evaluation results kept in a run folder, so that a resumed or repeated run does not measure the same model on the
same set twice."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable


def cached_metrics(path: Path, key: dict, compute: Callable[[], dict]) -> dict:
    """``compute()``, written to the JSON file ``path`` with ``key``; a later call with an equal key reads it back
    (any other key measures again and replaces the file)."""
    if path.exists():
        kept = json.loads(path.read_text())
        if kept.get("key") == key:
            return kept["metrics"]
    metrics = compute()
    path.write_text(json.dumps({"key": key, "metrics": metrics}, indent=2))
    return metrics
