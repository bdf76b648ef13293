"""InfoNCE with in-batch, cross-worker and hard negatives.

For query ``q_i`` with positive ``p_i`` the loss is::

    L_i = -log( exp(s(q_i, p_i) / τ) / Σ_{d ∈ D} exp(s(q_i, d) / τ) )

where ``s`` is cosine similarity (or dot product), ``τ`` the temperature and ``D`` every positive
and hard negative in the *global* batch: the texts of all workers are all-gathered with their
gradient, so each query sees ``world_size × batch`` candidates. Each rank averages ``L_i`` over its
own queries; data-parallel gradient averaging then gives exactly the gradient of the mean loss over
the concatenated global batch, whatever the worker count.

Candidates that are not the query's positive but have the same text as it, or whose query has the
same text as this query, are false negatives and are masked out (they share a text hash).

References: van den Oord et al., "Representation Learning with Contrastive Predictive Coding"
(2018, InfoNCE); Chen et al., "A Simple Framework for Contrastive Learning" (SimCLR, 2020,
temperature); Karpukhin et al., "Dense Passage Retrieval" (DPR, 2020, in-batch and hard negatives);
Henderson et al. (2017) / sentence-transformers' MultipleNegativesRankingLoss (scale = 1/τ).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fastemb.losses.gather import all_gather_no_grad, all_gather_with_grad, rank_and_world


class InfoNCELoss(nn.Module):
    """Contrastive loss over (query, positive[, hard negatives]) embeddings; see module docstring."""

    def __init__(self, temperature: float = 0.05, similarity: Literal["cosine", "dot"] = "cosine",
                 gather_across_workers: bool = True, mask_false_negatives: bool = True):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if similarity not in ("cosine", "dot"):
            raise ValueError(f"similarity must be 'cosine' or 'dot', got {similarity!r}")
        self.temperature = temperature
        self.similarity = similarity
        self.gather = gather_across_workers
        self.mask_false_negatives = mask_false_negatives

    def forward(self, query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor | None = None,
                query_ids: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None,
                negative_ids: torch.Tensor | None = None) -> torch.Tensor:
        """query, positive: (B, d); negatives: (B, k, d) or None.

        ``query_ids`` (B,), ``doc_ids`` (B,) and ``negative_ids`` (B, k) are int64 text hashes used to
        mask false negatives; without them nothing is masked."""
        batch = query.shape[0]
        gather = all_gather_with_grad if self.gather else (lambda t: t)
        gather_ids = all_gather_no_grad if self.gather else (lambda t: t)
        rank, _ = rank_and_world() if self.gather else (0, 1)

        docs = gather(positive)                                   # (W·B, d)
        n_positive_cols = docs.shape[0]
        cand_ids = gather_ids(doc_ids) if doc_ids is not None else None
        owner_qids = gather_ids(query_ids) if query_ids is not None else None
        if negatives is not None and negatives.shape[1] > 0:
            k = negatives.shape[1]
            docs = torch.cat([docs, gather(negatives.reshape(batch * k, -1))])
            if cand_ids is not None:
                cand_ids = torch.cat([cand_ids, gather_ids(negative_ids.reshape(-1))]) \
                    if negative_ids is not None else None

        if self.similarity == "cosine":
            query, docs = F.normalize(query, dim=-1), F.normalize(docs, dim=-1)
        scores = query @ docs.T / self.temperature                # (B, N)
        target = torch.arange(batch, device=query.device) + rank * batch

        if self.mask_false_negatives and cand_ids is not None and doc_ids is not None:
            false_neg = cand_ids.unsqueeze(0) == doc_ids.unsqueeze(1)     # same text as my positive
            if owner_qids is not None and query_ids is not None:          # positive of a copy of my query
                same_query = owner_qids.unsqueeze(0) == query_ids.unsqueeze(1)
                false_neg[:, :n_positive_cols] |= same_query
            false_neg[torch.arange(batch), target] = False
            scores = scores.masked_fill(false_neg, torch.finfo(scores.dtype).min)
        return F.cross_entropy(scores, target)
