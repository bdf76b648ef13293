"""The ``mine`` job spec (``job: mine``): which model mines, from which pairs and corpus, and the negative rules."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fastemb.spec import EmbedSpec, ModelSpec, _RunJob, _Section


class MiningSpec(_Section):
    """Retrieval depth, rank window, false-negative margin and sampling (fastemb/mine/select.py)."""
    top_k: int = Field(100, gt=0, le=10_000, description="candidates retrieved per query")
    num_negatives: int = Field(7, gt=0, le=256, description="negatives written per pair")
    range_min: int = Field(0, ge=0, description="skip the first ranks (0 = the most similar candidate)")
    range_max: int | None = Field(None, gt=0, description="ignore ranks ≥ this (default: top_k)")
    relative_margin: float | None = Field(0.05, ge=0, lt=1, description="drop candidates scoring above "
                                          "(1 - margin) x the positive's score (TopK-PercPos; 0.05 = 95%)")
    absolute_margin: float | None = Field(None, description="drop candidates scoring above positive - margin")
    sampling: Literal["top", "random"] = "top"
    query_chunk: int = Field(4096, gt=0, description="queries searched per faiss call")
    write_scores: bool = Field(True, description="write the mining model's scores [s(q,pos), s(q,neg_1), ...] "
                                                 "(teacher scores when the model is a teacher)")
    seed: int = 13

    @model_validator(mode="after")
    def _window(self) -> "MiningSpec":
        if self.range_max is not None and not self.range_min < self.range_max <= self.top_k:
            raise ValueError(f"need range_min < range_max <= top_k, got {self.range_min}, {self.range_max}, "
                             f"{self.top_k}")
        if self.range_min >= self.top_k:
            raise ValueError(f"range_min ({self.range_min}) must be < top_k ({self.top_k})")
        return self


class MinePairsSpec(_Section):
    """The pairs to mine negatives for, and the corpus the negatives come from."""
    train: str = Field("wordnet", description="'wordnet' (shipped train pairs) or a pairs file/folder")
    max_pairs: int | None = Field(None, gt=0, description="mine for at most this many pairs (seeded sample)")
    corpus: str = Field("positives", description="'positives' (every distinct positive of the pairs), 'wordnet' "
                                                 "(all 117k definitions) or a parquet file with id, text columns")


class MineJob(_RunJob):
    """``fastemb mine``: pairs → pairs with hard negatives (and scores) in ``<run>/pairs.parquet``."""
    job: Literal["mine"] = "mine"
    name: str = Field("mine", pattern=r"^[A-Za-z0-9_.-]+$")
    model: ModelSpec = ModelSpec()
    data: MinePairsSpec = MinePairsSpec()
    mining: MiningSpec = MiningSpec()
    embed: EmbedSpec = EmbedSpec()


def _register() -> None:
    """Register ``job: mine`` in the shared registry (works whichever module is imported first)."""
    from fastemb import spec as core

    core.JOB_TYPES["mine"] = MineJob


_register()
