"""The ``demo`` job spec (``job: demo``): one typed sub-spec per pipeline stage, run in order."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from fastemb.serve.spec import ServeJob
from fastemb.spec import IndexJob, TrainJob, TuneJob, _RunJob


class DemoJob(_RunJob):
    """``fastemb demo``: base eval → contrastive training → Tune → registry → index → serve → summary.

    Every stage writes under ``{storage_path}/{name}/``; the sub-specs' own ``storage_path`` is replaced."""
    job: Literal["demo"] = "demo"
    name: str = Field("demo", pattern=r"^[A-Za-z0-9_.-]+$")
    train: TrainJob = TrainJob()
    tune: TuneJob = TuneJob()
    index: IndexJob = IndexJob()
    serve: ServeJob | None = Field(ServeJob(), description="null: skip the serving stage")
    queries: list[str] = Field(["a large wild cat of Africa", "to move quickly on foot", "a written promise to pay"],
                               min_length=1, description="example queries sent to the running service")
    promote_metric: Literal["dev_ndcg@10"] = Field("dev_ndcg@10", description="the registry gate's metric")


def _register() -> None:
    from fastemb import spec as core

    core.JOB_TYPES["demo"] = DemoJob


_register()
