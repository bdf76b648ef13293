"""The ``demo`` job spec (``job: demo``): one typed sub-spec per pipeline stage, run in order."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from fastemb.spec.base import RunJob
from fastemb.spec.index import IndexJob
from fastemb.spec.serve import ServeJob
from fastemb.spec.train import TrainJob
from fastemb.spec.tune import TuneJob


class DemoJob(RunJob):
    """``fastemb demo``: base eval → contrastive training → Tune → registry → index → serve → summary.

    Every stage writes under ``{storage_path}/{name}/``: the sub-specs' own ``storage_path`` is replaced, and any other
    output path they set outside that folder is moved into it (``fastemb/demo/job.py``)."""
    job: Literal["demo"] = "demo"
    name: str = Field("demo", pattern=r"^[A-Za-z0-9_.-]+$")
    train: TrainJob = TrainJob()
    tune: TuneJob = TuneJob()
    index: IndexJob = IndexJob()
    serve: ServeJob | None = Field(ServeJob(), description="null: skip the serving stage")
    queries: list[str] = Field(["a large wild cat of Africa", "to move quickly on foot", "a written promise to pay"],
                               min_length=1, description="example queries sent to the running service")
    promote_metric: Literal["dev_ndcg@10"] = Field("dev_ndcg@10", description="the registry gate's metric")

