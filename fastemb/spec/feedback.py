"""The ``feedback`` job spec (``job: feedback``, command ``fastemb feedback export``): Serve's search and click logs
turned into weighted training pairs (fastemb/feedback/)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from fastemb.spec.base import Section, input_path, not_path, output_path


class FeedbackJob(Section):
    """``fastemb feedback export``: turn Serve's search and click logs into weighted training pairs."""
    job: Literal["feedback"] = "feedback"
    feedback_dir: str = input_path("runs/serve/ab", description="a serve job's feedback_dir: its search and click "
                                   "logs (events-*.jsonl)")
    corpus: str = input_path(..., description="the served corpus, as the index job reads it (a parquet file, "
                             "folder or URI; `wordnet:test` is a serve arm's `corpus: wordnet`): the texts of the "
                             "logged result ids")
    id_column: str = not_path("id", description="the corpus column holding the ids the service returns")
    text_column: str = not_path("text", description="the corpus column holding the texts")
    output: str = output_path("runs/feedback/pairs.parquet", description="the pairs file written (the documented "
                              "pairs format plus a `weight` column)")
    report: str | None = output_path(None, description="write the counts (kept, dropped by reason) as JSON here")
    arms: list[str] | None = Field(None, description="only these A/B arms' searches (e.g. [production]); null: all")
    min_impressions: int = Field(2, ge=1, description="a query must have been searched at least this often (by "
                                 "any user) before its clicks become pairs")
    negatives: Literal["skip_above", "none"] = Field(
        "skip_above", description="skip_above: results shown above a click and not clicked are its hard negatives "
        "(Joachims et al. 2005); none: no negatives")
    max_negatives: int = Field(4, ge=0, description="hard negatives kept per pair, the highest-ranked first")
    propensity_eta: float = Field(1.0, ge=0, description="position bias: a click at rank r is weighted by "
                                  "1/P(seen | r) with P = (1/r)^eta (Joachims et al. 2017); 0: no correction")
    max_weight: float = Field(10.0, ge=1, description="clip each click's inverse-propensity weight here (the "
                              "variance of clicks far down the list)")
