"""The ``eval`` job spec (``job: eval``): retrieval metrics of one model on an evaluation split."""
from __future__ import annotations

from typing import Literal

from fastemb.spec.base import Section, output_path
from fastemb.spec.sections import DataSpec, ModelSpec


class EvalJob(Section):
    """``fastemb eval``: retrieval metrics of one model on an evaluation split."""
    job: Literal["eval"] = "eval"
    model: ModelSpec = ModelSpec()
    data: DataSpec = DataSpec()
    split: Literal["dev", "test"] = "test"
    output: str | None = output_path(None, description="write the metrics JSON here")
