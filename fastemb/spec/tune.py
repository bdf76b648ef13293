"""The ``tune`` job spec (``job: tune``): a training job plus the Ray Tune search space and how the winner is picked."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from fastemb.spec.base import Section, output_path
from fastemb.spec.train import TrainJob


class SearchSpace(Section):
    """Ray Tune search space: bounds are log-uniform ranges, lists are choices; an axis left null is not searched
    (the spec's own value is used). Every axis is applied to a trial's training job by fastemb/tune/trial.py
    (``AXES``); the compression axes (``pq_bytes``, ``matryoshka_dim``) set how the objective compresses vectors."""
    temperature: list[float] = Field([0.01, 0.1], min_length=2, max_length=2, description="log-uniform [low, high]")
    lr: list[float] = Field([2e-5, 2e-4], min_length=2, max_length=2, description="log-uniform [low, high]")
    micro_batch_size: list[int] = Field([16, 32, 64], min_length=1, description="choice: the loss's batch per "
                                        "worker (with train.cache_mini_batch, large batches in bounded memory)")
    hard_negatives: list[int] | None = Field(None, min_length=1, description="choice: hard negatives per query "
                                             "(loss.hard_negatives); the pairs need at least the largest")
    matryoshka_dim: list[int | None] | None = Field(None, min_length=1, description="choice: dimension the vectors "
                                                    "are truncated to before PQ (null: the model's width); a trial "
                                                    "truncating to d trains with the Matryoshka loss at d, 2d, 4d, … "
                                                    "and the width (or at loss.matryoshka_dims, which must hold d)")
    pq_bytes: list[int] = Field([24, 48, 96], min_length=1, description="choice: PQ code bytes per vector")
    # a merge-weight axis (export.merge.weight, WiSE-FT) goes here, with its AXES line in fastemb/tune/trial.py

    @field_validator("temperature", "lr")
    @classmethod
    def _ordered_positive(cls, v: list[float]) -> list[float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"expected [low, high] with 0 < low <= high, got {v}")
        return v

    @field_validator("hard_negatives")
    @classmethod
    def _negatives(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(not 0 <= k <= 64 for k in v):
            raise ValueError(f"expected choices in 0..64, got {v}")
        return v

    @field_validator("matryoshka_dim")
    @classmethod
    def _dims(cls, v: list[int | None] | None) -> list[int | None] | None:
        if v is not None and any(d is not None and d <= 0 for d in v):
            raise ValueError(f"expected dimensions > 0 (or null: the model's width), got {v}")
        return v


class TuneSpec(Section):
    """How the search runs and what wins."""
    num_samples: int = Field(8, ge=1)
    search: Literal["optuna", "random"] = "optuna"
    scheduler: Literal["asha", "none"] = "asha"
    grace_period: int | None = Field(None, ge=1, description="ASHA: dev evaluations before a trial can be stopped; "
                                     "default (and lower bound): the first evaluation after every trial's "
                                     "learning-rate warm-up (fastemb/tune/tuner.py: asha_grace)")
    reduction_factor: int = Field(2, ge=2)
    max_concurrent_trials: int | None = Field(None, ge=1, description="default: cluster CPUs // CPUs per trial")
    min_compression: float = Field(16.0, ge=1, description="the winner must compress vectors at least this much")
    opq: bool = Field(True, description="rotate before PQ (OPQ)")
    max_failures: int = Field(1, ge=0, description="retries of a failing trial")
    registry: str | None = output_path(None, description="register the winner in this model registry (path or URI)")
    include_default: bool = Field(True, description="run the spec's own configuration as the first trial, so the "
                                                    "winner is compared with it in the same search")
    compare_on_test: bool = Field(True, description="after the search, score the winner and the default "
                                  "configuration once on the test split at the winner's compression "
                                  "(fastemb/tune/holdout.py; trains the default if ASHA stopped it)")


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
        for field in ("tasks", "negatives_pool", "image_text"):
            if getattr(self, field) is not None:
                raise ValueError(f"{field}: not supported by fastemb tune; tune a single-task text job without it")
        return self

    @model_validator(mode="after")
    def _default_inside_space(self) -> TuneJob:
        if not self.tune.include_default:
            return self
        s = self.space
        checks = (("loss.temperature", self.loss.temperature, "space.temperature", s.temperature, True),
                  ("train.lr", self.train.lr, "space.lr", s.lr, True),
                  ("train.micro_batch_size", self.train.micro_batch_size, "space.micro_batch_size",
                   s.micro_batch_size, False),
                  ("loss.hard_negatives", self.loss.hard_negatives, "space.hard_negatives", s.hard_negatives, False),
                  ("the model's width (null: no truncation)", None, "space.matryoshka_dim", s.matryoshka_dim, False))
        for field, value, space_field, space, is_range in checks:
            if space is None:
                continue
            inside = space[0] <= value <= space[1] if is_range else value in space
            if not inside:
                shown = "" if value is None else f": {value}"
                raise ValueError(f"{field}{shown} is the default trial (tune.include_default) but lies outside "
                                 f"{space_field} {space}; widen the space or set tune.include_default: false")
        return self

    @model_validator(mode="after")
    def _space_fits_training(self) -> TuneJob:
        s, cache = self.space, self.train.cache_mini_batch
        small = [b for b in s.micro_batch_size if cache is not None and b < cache]
        if small:
            raise ValueError(f"space.micro_batch_size: {small[0]} is smaller than train.cache_mini_batch {cache}; "
                             "keep every batch choice at least the cached mini-batch")
        dims = self.loss.matryoshka_dims
        missing = [d for d in s.matryoshka_dim or [] if d is not None and dims is not None and d not in dims]
        if missing:
            raise ValueError(f"space.matryoshka_dim: {missing[0]} is not one of loss.matryoshka_dims {dims}, which "
                             "the trials train with; add it there or leave loss.matryoshka_dims unset")
        return self


