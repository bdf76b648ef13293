"""The ``mine`` job spec (``job: mine``): which model mines, from which pairs and corpus, and the negative rules."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from fastemb.spec import EmbedSpec, ModelSpec, NegativeRulesSpec, _RunJob, _Section


class MiningSpec(NegativeRulesSpec):
    """Retrieval depth, rank window, false-negative margin and sampling (fastemb/mine/select.py)."""
    num_negatives: int = Field(7, gt=0, le=256, description="negatives written per pair")
    write_scores: bool = Field(True, description="write the mining model's scores [s(q,pos), s(q,neg_1), ...] "
                                                 "(teacher scores when the model is a teacher)")


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
