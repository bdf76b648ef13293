"""Evaluation results kept, so that the same model is not measured on the same set twice: in a run folder (a resumed
or repeated run), and in a metrics cache shared by every job on this machine (``$FASTEMB_CACHE/metrics``, default
``~/.cache/fastemb/metrics``; ``FASTEMB_METRICS_CACHE`` names another folder, or ``off``) under a key made of what
decides the figures: the model folder's bytes, its settings, the evaluation files' bytes and fastemb's own source."""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable

from fastemb.model.card import CARD_FILE
from fastemb.model.teachers import cache_root
from fastemb.record import files_fingerprint

logger = logging.getLogger(__name__)


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


def weights_fingerprint(model_dir: str | Path) -> str:
    """sha256 of a model folder's files (weights, configs, tokenizer) without its card (written after the evaluation):
    the key of a model measured once, so an export that writes the same weights again is not measured again."""
    files = [f for f in sorted(Path(model_dir).rglob("*")) if f.is_file() and f.name != CARD_FILE]
    return files_fingerprint(files)


METRICS_CACHE_ENV = "FASTEMB_METRICS_CACHE"


def metrics_cache_dir() -> Path | None:
    """The shared metrics cache folder, or None when ``FASTEMB_METRICS_CACHE=off``."""
    where = os.environ.get(METRICS_CACHE_ENV, "")
    if where.lower() == "off":
        return None
    return Path(where).expanduser() if where else cache_root() / "metrics"


@functools.lru_cache(maxsize=1)
def source_fingerprint() -> str:
    """sha256 of fastemb's Python source and the torch and transformers versions: any change measures again."""
    import torch
    import transformers

    package = Path(__file__).resolve().parents[1]
    return files_fingerprint(sorted(package.rglob("*.py"))) + f"/{torch.__version__}/{transformers.__version__}"


def shared_metrics(key: dict, compute: Callable[[], dict]) -> dict:
    """``compute()``, kept in the shared metrics cache under ``key`` (plus fastemb's source fingerprint); an equal
    key later reads it back. Written atomically, so concurrent jobs never read half a file."""
    folder = metrics_cache_dir()
    if folder is None:
        return compute()
    full = {**key, "source": source_fingerprint()}
    path = folder / f"{hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()}.json"
    try:
        kept = json.loads(path.read_text())
        if kept.get("key") == full:
            logger.info(f"metrics of an identical earlier measurement ({path}; {METRICS_CACHE_ENV}=off measures "
                        "again)")
            return kept["metrics"]
    except (OSError, ValueError):
        pass
    metrics = compute()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as f:
            json.dump({"key": full, "metrics": metrics}, f)
        os.replace(f.name, path)
    except OSError:
        pass  # a read-only or full cache folder costs the next job a measurement, nothing else
    return metrics
