"""The ``mine`` job spec (``job: mine``): which model mines, from which pairs and corpus, the negative rules, and an
optional teacher that re-ranks the candidates (``mining.rescore_with``)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fastemb.spec.base import RunJob, Section, input_path
from fastemb.spec.sections import EmbedSpec, ModelSpec, NegativeRulesSpec


class MiningSpec(NegativeRulesSpec):
    """Retrieval depth, rank window, false-negative margin and sampling (fastemb/mine/select.py)."""
    num_negatives: int = Field(7, gt=0, le=256, description="negatives written per pair")
    write_scores: bool = Field(True, description="write the scores [s(q,pos), s(q,neg_1), ...] of the model that "
                                                 "ranked the candidates (the rescoring teacher's when set)")
    rescore_with: str | None = input_path(None, min_length=1, description="teacher alias (all-mpnet-base-v2) or local "
                                          "sentence-transformers / HF folder: re-ranks each query's top-K by its "
                                          "cosine score; the rank window and margins then use the teacher's ranking "
                                          "and scores")
    rescore_pooling: Literal["mean", "cls"] | None = Field(None, description="default: the teacher's own")
    rescore_max_length: int | None = Field(None, gt=0, le=8192, description="default: model.max_length")

    @model_validator(mode="after")
    def _rescore_options(self) -> MiningSpec:
        for name in ("rescore_pooling", "rescore_max_length"):
            if getattr(self, name) is not None and self.rescore_with is None:
                raise ValueError(f"mining.{name} is set but mining.rescore_with is not; name the teacher there")
        return self


class MinePairsSpec(Section):
    """The pairs to mine negatives for, and the corpus the negatives come from."""
    train: str = input_path("wordnet", description="'wordnet' (shipped train pairs) or a pairs file/folder")
    max_pairs: int | None = Field(None, gt=0, description="mine for at most this many pairs (seeded sample)")
    corpus: str = input_path("positives", description="'positives' (every distinct positive of the pairs), "
                                                      "'wordnet' (all 117k definitions) or a parquet file with id, "
                                                      "text columns")


class MineJob(RunJob):
    """``fastemb mine``: pairs → pairs with hard negatives (and scores) in ``<run>/pairs.parquet``."""
    job: Literal["mine"] = "mine"
    name: str = Field("mine", pattern=r"^[A-Za-z0-9_.-]+$")
    model: ModelSpec = ModelSpec()
    data: MinePairsSpec = MinePairsSpec()
    mining: MiningSpec = MiningSpec()
    embed: EmbedSpec = EmbedSpec()

