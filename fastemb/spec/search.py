"""The ``search`` job spec (``job: search``): query texts (and, over an index built with an image–text model, query
images) against an index built by ``fastemb index``."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fastemb.spec.base import Section, input_path, output_path


class SearchJob(Section):
    """``fastemb search``: top-k documents of query texts or query images in a built index."""
    job: Literal["search"] = "search"
    index_dir: str = input_path(..., description="folder written by `fastemb index` (holds manifest.json), or its "
                                "object-store URI (the manifest's `location`; fetched into a local cache)")
    queries: list[str] = Field(default_factory=list, description="query texts (text → text, or text → image over an "
                               "image index)")
    query_images: list[str] | str | None = input_path(
        None, description="query images (image → image over an image index; needs an image–text model): an image "
        "file, a folder of image files, or a list of image files")
    k: int = Field(10, gt=0, le=10_000)
    nprobe: int | None = Field(None, gt=0)
    ef_search: int | None = Field(None, gt=0)
    output: str | None = output_path(None, description="write the results JSON here")

    @model_validator(mode="after")
    def _some_query(self) -> SearchJob:
        if not self.queries and not self.query_images:
            raise ValueError("queries or query_images: give at least one query")
        return self
