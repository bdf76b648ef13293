"""Choose hard negatives from one query's ranked candidates, counting every skipped candidate by reason.

Rules, applied in this order to the top-K list (rank 0 = most similar):

1. ``positive``: the candidate's text is a positive of this query;
2. ``same as query``: the candidate's text is the query's own text;
3. ``duplicate text``: a candidate with the same text is ranked higher;
4. ``outside rank window``: rank not in ``[range_min, range_max)``;
5. ``likely false negative``: the score is too close to the positive's — above
   ``(1 − relative_margin) · s(q, p)`` (NV-Retriever's TopK-PercPos: ``relative_margin = 0.05`` keeps candidates
   scoring below 95 % of the positive) or above ``s(q, p) − absolute_margin`` (TopK-MarginPos);
   with several positives the lowest positive score is used (the most conservative);
6. the rest are eligible; ``num_negatives`` of them are taken, the highest ranked (``top``) or uniformly at
   random (``random``); eligible candidates left over are counted as ``not sampled``.

With a rescoring teacher (``select_for_queries(..., rescore=...)``) the mining model only retrieves: each query's
top-K candidates are re-ranked by the teacher's scores (descending; ties keep the retrieval order) before the rules
run, so ranks, the rank window and the margins all refer to the teacher's ranking and scores, and the positive's
score passed in must be the teacher's too.

Reference: Moreira et al., "NV-Retriever: Improving text embedding models with effective hard-negative
mining" (2024); sentence-transformers' ``mine_hard_negatives``; FlagEmbedding's ``hn_mine.py`` (rank window).
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Literal

import faiss
import numpy as np

from fastemb.mine.topk import chunked_topk

if TYPE_CHECKING:
    from fastemb.spec.sections import NegativeRulesSpec

Rescore = Callable[[int, np.ndarray], np.ndarray]
"""(query row, its retrieved corpus rows (≤ K, no −1)) → the teacher's scores of those rows, same order."""


@dataclass(frozen=True)
class NegativeRules:
    """How negatives are chosen from the ranked candidates."""
    num_negatives: int = 7
    range_min: int = 0
    range_max: int | None = None
    relative_margin: float | None = 0.05
    absolute_margin: float | None = None
    sampling: Literal["top", "random"] = "top"

    def __post_init__(self) -> None:
        if self.num_negatives < 1:
            raise ValueError(f"num_negatives must be ≥ 1, got {self.num_negatives}")
        if self.range_min < 0 or (self.range_max is not None and self.range_max <= self.range_min):
            raise ValueError(f"rank window [{self.range_min}, {self.range_max}) is empty or negative")
        if self.relative_margin is not None and not 0 <= self.relative_margin < 1:
            raise ValueError(f"relative_margin must be in [0, 1), got {self.relative_margin}")
        if self.sampling not in ("top", "random"):
            raise ValueError(f"sampling must be 'top' or 'random', got {self.sampling!r}")

    @classmethod
    def from_spec(cls, spec: NegativeRulesSpec, num_negatives: int) -> NegativeRules:
        """The rules of a spec's negative-selection section, taking ``num_negatives`` per query."""
        return cls(num_negatives, spec.range_min, spec.range_max, spec.relative_margin, spec.absolute_margin,
                   spec.sampling)

    def max_score(self, positive_score: float) -> float:
        """Candidates scoring above this are likely false negatives."""
        limit = np.inf
        if self.relative_margin is not None:
            limit = min(limit, (1.0 - self.relative_margin) * positive_score)
        if self.absolute_margin is not None:
            limit = min(limit, positive_score - self.absolute_margin)
        return float(limit)


def select_negatives(cand_ids: np.ndarray, cand_scores: np.ndarray, cand_hashes: np.ndarray,
                     positive_hashes: set[int], query_hash: int, positive_score: float, rules: NegativeRules,
                     skipped: Counter, rng: random.Random) -> list[int]:
    """Indices into the candidate list of the chosen negatives; adds skipped candidates to ``skipped``.

    ``cand_ids`` (K,) are corpus rows (−1 = no result, ignored), ``cand_scores`` (K,) their similarities in
    rank order, ``cand_hashes`` (K,) their text hashes."""
    limit = rules.max_score(positive_score)
    range_max = rules.range_max if rules.range_max is not None else len(cand_ids)
    seen: set[int] = set()
    eligible: list[int] = []
    for rank, (row, score, h) in enumerate(zip(cand_ids.tolist(), cand_scores.tolist(), cand_hashes.tolist())):
        if row < 0:
            continue
        if h in positive_hashes:
            reason = "positive"
        elif h == query_hash:
            reason = "same as query"
        elif h in seen:
            reason = "duplicate text"
        elif not rules.range_min <= rank < range_max:
            reason = "outside rank window"
        elif score > limit:
            reason = "likely false negative"
        else:
            reason = None
        seen.add(h)
        if reason:
            skipped[reason] += 1
        else:
            eligible.append(rank)
    if rules.sampling == "top" or len(eligible) <= rules.num_negatives:
        chosen = eligible[:rules.num_negatives]
    else:
        chosen = sorted(rng.sample(eligible, rules.num_negatives))
    skipped["not sampled"] += len(eligible) - len(chosen)
    return chosen


def rerank(rows: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidates ``rows`` ordered by their new ``scores``, descending (ties keep their order), with those scores."""
    scores = np.asarray(scores, dtype=np.float32)
    order = np.argsort(-scores, kind="stable")
    return rows[order], scores[order]


def select_for_queries(index: faiss.Index, query_vectors: np.ndarray, corpus_hashes: np.ndarray,
                       positive_hashes: list[set[int]], query_hashes: list[int], positive_scores: list[float],
                       rules: NegativeRules, top_k: int, query_chunk: int, skipped: Counter, rng: random.Random,
                       rescore: Rescore | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray, list[int]]]:
    """Search every query's top-K in ``index`` one chunk at a time and choose its negatives with
    :func:`select_negatives`. Yields (query row, candidate corpus rows (K,), their scores (K,), chosen ranks);
    the per-query lists are indexed by query row. With ``rescore`` the candidates are first re-ranked by its scores
    (:func:`rerank`), which are the ones yielded; ``positive_scores`` must then be on the teacher's scale."""
    for start, scores, rows in chunked_topk(index, query_vectors, top_k, query_chunk):
        for j in range(rows.shape[0]):
            i = start + j
            cand, cand_scores = rows[j], scores[j]
            if rescore is not None:
                cand = cand[cand >= 0]
                cand, cand_scores = rerank(cand, rescore(i, cand))
            hashes = np.where(cand >= 0, corpus_hashes[np.maximum(cand, 0)], 0)
            picked = select_negatives(cand, cand_scores, hashes, positive_hashes[i], query_hashes[i],
                                      positive_scores[i], rules, skipped, rng)
            yield i, cand, cand_scores, picked
