"""``fastemb search``: top-k documents of query texts, or of query images, in a built index (a folder or its
object-store URI)."""
from __future__ import annotations

import json
from pathlib import Path

from fastemb.data.images import ImageError, decode_image
from fastemb.data.pairs import DataError
from fastemb.index.searcher import Searcher
from fastemb.spec import SearchJob

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp")


def run_search(spec: SearchJob) -> list[dict]:
    """``[{"query" | "query_image", "hits": [{"id", "score", "text"}, ...]}, ...]`` (texts first, then images); also
    written to ``spec.output`` if set."""
    searcher = Searcher(spec.index_dir, nprobe=spec.nprobe, ef_search=spec.ef_search)
    results = []
    if spec.queries:
        hits = searcher.search(spec.queries, spec.k)
        results += [{"query": q, "hits": h} for q, h in zip(spec.queries, hits)]
    if spec.query_images:
        paths = image_query_files(spec.query_images)
        hits = searcher.search_images([load_query_image(p) for p in paths], spec.k)
        results += [{"query_image": p, "hits": h} for p, h in zip(paths, hits)]
    if spec.output:
        Path(spec.output).write_text(json.dumps(results, indent=2, ensure_ascii=False))
    return results


def image_query_files(value: list[str] | str) -> list[str]:
    """The query image files: the list as given, one file, or a folder's image files (sorted)."""
    if isinstance(value, list):
        return value
    path = Path(value).expanduser()
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"query_images: {value} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        return files
    return [value]


def load_query_image(path: str):
    """A query image as an RGB picture; a DataError naming the file and the reason when it cannot be used."""
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as err:
        raise DataError(f"query_images: cannot read {path}: {err.strerror or err}") from None
    try:
        return decode_image(data)
    except ImageError as err:
        raise DataError(f"query_images: {path}: {err}") from None


def cli_summary(results: list[dict]) -> list[dict]:
    """What ``fastemb search`` prints: every query's hits."""
    return results
