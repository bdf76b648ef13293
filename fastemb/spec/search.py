"""The ``search`` job spec (``job: search``): query texts against an index built by ``fastemb index``."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from fastemb.spec.base import Section, input_path, output_path


class SearchJob(Section):
    """``fastemb search``: top-k documents of query texts in a built index."""
    job: Literal["search"] = "search"
    index_dir: str = input_path(..., description="folder written by `fastemb index` (holds manifest.json), or its "
                                "object-store URI (the manifest's `location`; fetched into a local cache)")
    queries: list[str] = Field(..., min_length=1)
    k: int = Field(10, gt=0, le=10_000)
    nprobe: int | None = Field(None, gt=0)
    ef_search: int | None = Field(None, gt=0)
    output: str | None = output_path(None, description="write the results JSON here")
