"""The ``static`` job spec (``job: static``): distil a model into a static token-embedding model (Model2Vec) and
measure it against the model it came from."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from fastemb.spec.base import Section, input_path, output_path
from fastemb.spec.sections import EvalSetSpec


class StaticJob(Section):
    """``fastemb static``: distil a model into a static token-embedding model (Model2Vec) and evaluate both."""
    job: Literal["static"] = "static"
    model: str = input_path("all-MiniLM-L6-v2", description="the model to distil: alias or folder (a fastemb export "
                            "or any sentence-transformers model whose first module is a Transformer)")
    output: str = output_path("runs/static/model", description="the static model folder (loads in "
                              "sentence-transformers, Model2Vec, `fastemb eval` and a serve arm's `model`)")
    dim: int | None = Field(256, gt=0, description="PCA dimensions of the token vectors, at most the model's width; "
                            "null: the model's width, no PCA")
    sif: float | None = Field(1e-4, gt=0, lt=1, description="SIF coefficient of Model2Vec's token weights (rarer "
                              "tokens weigh more); null: unweighted")
    vocab_from: str | None = input_path(None, description="keep only the tokens these texts use: 'wordnet', an "
                                        "evaluation-set folder or a parquet file/folder with a `text` column "
                                        "(a smaller model for a known domain; other texts lose the dropped tokens)")
    data: EvalSetSpec = EvalSetSpec()
    split: Literal["dev", "test"] | None = Field("test", description="evaluate the static and the source model on "
                                                 "this split of data.eval; null: no evaluation")
    report: str | None = output_path(None, description="write the result (paths, sizes, metrics) as JSON here")
