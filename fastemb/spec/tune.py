"""The ``tune`` job spec (``job: tune``): a training job plus the Ray Tune search space and how the winner is picked."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from fastemb.spec.base import Section, output_path
from fastemb.spec.train import TrainJob


class SearchSpace(Section):
    """Ray Tune search space: bounds are log-uniform ranges, lists are choices."""
    temperature: list[float] = Field([0.01, 0.1], min_length=2, max_length=2, description="log-uniform [low, high]")
    lr: list[float] = Field([2e-5, 2e-4], min_length=2, max_length=2, description="log-uniform [low, high]")
    micro_batch_size: list[int] = Field([16, 32, 64], min_length=1, description="choice")
    pq_bytes: list[int] = Field([24, 48, 96], min_length=1, description="choice: PQ code bytes per vector")

    @field_validator("temperature", "lr")
    @classmethod
    def _ordered_positive(cls, v: list[float]) -> list[float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"expected [low, high] with 0 < low <= high, got {v}")
        return v


class TuneSpec(Section):
    """How the search runs and what wins."""
    num_samples: int = Field(8, ge=1)
    search: Literal["optuna", "random"] = "optuna"
    scheduler: Literal["asha", "none"] = "asha"
    grace_period: int = Field(1, ge=1, description="ASHA: dev evaluations before a trial can be stopped")
    reduction_factor: int = Field(2, ge=2)
    max_concurrent_trials: int | None = Field(None, ge=1, description="default: cluster CPUs // CPUs per trial")
    min_compression: float = Field(16.0, ge=1, description="the winner must compress vectors at least this much")
    opq: bool = Field(True, description="rotate before PQ (OPQ)")
    max_failures: int = Field(1, ge=0, description="retries of a failing trial")
    registry: str | None = output_path(None, description="register the winner in this model registry (path or URI)")
    include_default: bool = Field(True, description="run the spec's own configuration as the first trial, so the "
                                                    "winner is compared with it in the same search")


class TuneJob(TrainJob):
    """``fastemb tune``: Ray Tune drives the training job; the objective is dev nDCG@10 after compression."""
    job: Literal["tune"] = "tune"  # type: ignore[assignment]
    name: str = Field("tune", pattern=r"^[A-Za-z0-9_.-]+$")
    tune: TuneSpec = TuneSpec()
    space: SearchSpace = SearchSpace()

    @model_validator(mode="after")
    def _no_distill(self) -> TuneJob:
        if self.distill is not None:
            raise ValueError("distill: not supported by fastemb tune (teacher outputs are computed by fastemb train); "
                             "tune a contrastive job, then distil from its winner")
        for field in ("tasks", "negatives_pool"):
            if getattr(self, field) is not None:
                raise ValueError(f"{field}: not supported by fastemb tune; tune a single-task job without it")
        return self

    @model_validator(mode="after")
    def _default_inside_space(self) -> TuneJob:
        if not self.tune.include_default:
            return self
        checks = (("loss.temperature", self.loss.temperature, "space.temperature", self.space.temperature, True),
                  ("train.lr", self.train.lr, "space.lr", self.space.lr, True),
                  ("train.micro_batch_size", self.train.micro_batch_size, "space.micro_batch_size",
                   self.space.micro_batch_size, False))
        for field, value, space_field, space, is_range in checks:
            inside = space[0] <= value <= space[1] if is_range else value in space
            if not inside:
                raise ValueError(f"{field}: {value} is the default trial (tune.include_default) but lies outside "
                                 f"{space_field} {space}; widen the space or set tune.include_default: false")
        return self


