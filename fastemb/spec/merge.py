"""The ``merge`` job spec (``job: merge``): models of one architecture, their weights (given, or chosen on the dev
sets), the evaluation sets and an optional registry."""
from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from fastemb.spec.base import RunJob, Section, input_path, output_path
from fastemb.spec.sections import EvalSetSpec, GeneralEvalSpec, MergeSpec, weights_in_unit_interval


class MergeInput(Section):
    """One model of a merge."""
    path: str = input_path(..., description="alias or local folder (sentence-transformers or HF)")
    weight: float | None = Field(None, ge=0, le=1, description="its weight; give one to every model or to none")


class MergeJob(RunJob):
    """``fastemb merge``: interpolate the weights of models of one architecture and tokenizer (WiSE-FT, LM-Cocktail).

    θ = Σ wᵢ·θᵢ. With weights on every model they are used as given (they must sum to 1). Without weights the job
    takes two models, the tuned one first and its base second, and chooses the first one's weight from ``grid`` on
    the in-domain and general dev sets (fastemb/merge/select.py). The merged folder keeps ``models.0``'s settings
    (pooling, normalisation, length, synonyms); ``report.json`` records how it was merged."""
    job: Literal["merge"] = "merge"
    name: str = Field("merge", pattern=r"^[A-Za-z0-9_.-]+$")
    models: list[MergeInput] = Field(..., min_length=2, description="the models merged; without weights: the tuned "
                                     "model, then its base (the base is the reference of the general tolerance)")
    grid: list[float] = Field(MergeSpec.model_fields["grid"].default, min_length=1,
                              description="weights of models.0 tried when no model has a weight (each in [0, 1])")
    data: EvalSetSpec = Field(EvalSetSpec(), description="the in-domain evaluation set")
    general: GeneralEvalSpec | None = Field(GeneralEvalSpec(), description="the general-domain evaluation set; "
                                            "null: none (then every model needs a weight)")
    registry: str | None = output_path(None, description="register the merged model in this registry (path or URI); "
                                       "its version records how it was merged")

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: list[float]) -> list[float]:
        return weights_in_unit_interval(v)

    @model_validator(mode="after")
    def _weights(self) -> MergeJob:
        given = [m.weight is not None for m in self.models]
        if any(given) and not all(given):
            missing = given.index(False)
            raise ValueError(f"models.{missing}.weight: give a weight to every model or to none")
        if all(given):
            total = sum(m.weight for m in self.models)
            if not math.isclose(total, 1.0, abs_tol=1e-6):
                raise ValueError(f"models: the weights sum to {total:g}; they must sum to 1")
            return self
        if len(self.models) != 2:
            raise ValueError(f"models: {len(self.models)} models without weights; the weight is chosen between two "
                             "models (tuned, base): give every model a weight to merge more")
        if self.general is None:
            raise ValueError("general: choosing the weight needs the general set; keep it or give every model a "
                             "weight")
        return self

    @property
    def fixed_weights(self) -> list[float] | None:
        """The given weights, or None when the job chooses them."""
        return [m.weight for m in self.models] if self.models[0].weight is not None else None
