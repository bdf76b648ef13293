"""InfoNCE with in-batch, cross-worker and hard negatives.

For query ``q_i`` with positive ``p_i`` the loss is::

    L_i = -log( exp(s(q_i, p_i) / τ) / Σ_{d ∈ D} exp(s(q_i, d) / τ) )

where ``s`` is cosine similarity (or dot product), ``τ`` the temperature and ``D`` every positive
and hard negative in the *global* batch: the texts of all workers are all-gathered with their
gradient, so each query sees ``world_size × batch`` candidates. Each rank averages ``L_i`` over its
own queries; data-parallel gradient averaging then gives exactly the gradient of the mean loss over
the concatenated global batch, whatever the worker count.

With per-pair ``weights`` w_i (e.g. inverse-propensity click weights, fastemb/feedback/clicks.py) each rank's loss is
``(1/B) Σ_i w_i L_i``: pairs weighted to mean 1 over the data keep the loss's scale, and the gradient is the
importance-weighted estimate of the loss over the population the weights correct for (Joachims et al., "Unbiased
Learning-to-Rank with Biased Feedback", WSDM 2017).

Candidates that are not the query's positive but have the same text as it, or whose query has the
same text as this query, are false negatives and are masked out (they share a text hash).

With ``block_rows`` a batch larger than it is scored a block of query rows at a time, each block under activation
checkpointing: the (B × N) score matrix is never held whole, only a (block × N) one, in the forward and the backward
pass (the cached loss's big batches, fastemb/train/grad_cache.py). The value and gradients are the same.

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
                 gather_across_workers: bool = True, mask_false_negatives: bool = True,
                 block_rows: int | None = None):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if similarity not in ("cosine", "dot"):
            raise ValueError(f"similarity must be 'cosine' or 'dot', got {similarity!r}")
        if block_rows is not None and block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {block_rows}")
        self.temperature = temperature
        self.similarity = similarity
        self.gather = gather_across_workers
        self.mask_false_negatives = mask_false_negatives
        self.block_rows = block_rows

    def forward(self, query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor | None = None,
                query_ids: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None,
                negative_ids: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
        """query, positive: (B, d); negatives: (B, k, d) or None.

        ``query_ids`` (B,), ``doc_ids`` (B,) and ``negative_ids`` (B, k) are int64 text hashes used to
        mask false negatives; without them nothing is masked. ``weights`` (B,): each query's term is multiplied by
        its weight before the mean; None: all 1."""
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
        target = torch.arange(batch, device=query.device) + rank * batch
        masking = self.mask_false_negatives and cand_ids is not None and doc_ids is not None
        mask_ids = (cand_ids, owner_qids if query_ids is not None else None, n_positive_cols) if masking else None
        if weights is not None:
            weights = weights.to(device=query.device, dtype=query.dtype)
        if self.block_rows is None or batch <= self.block_rows:
            return self._rows_loss(query, docs, target, doc_ids, query_ids, mask_ids, weights) / batch
        from torch.utils.checkpoint import checkpoint

        total = query.new_zeros(())
        for start in range(0, batch, self.block_rows):
            rows = slice(start, start + self.block_rows)
            total = total + checkpoint(self._rows_loss, query[rows], docs, target[rows],
                                       doc_ids[rows] if doc_ids is not None else None,
                                       query_ids[rows] if query_ids is not None else None, mask_ids,
                                       weights[rows] if weights is not None else None, use_reentrant=False)
        return total / batch

    def _rows_loss(self, query: torch.Tensor, docs: torch.Tensor, target: torch.Tensor,
                   doc_ids: torch.Tensor | None, query_ids: torch.Tensor | None, mask_ids: tuple | None,
                   weights: torch.Tensor | None) -> torch.Tensor:
        """The summed (``weights``: weighted) cross-entropy of some query rows against every candidate, false
        negatives masked (``mask_ids``: the candidates' text hashes, the gathered queries' hashes or None, and the
        number of positive columns)."""
        scores = query @ docs.T / self.temperature                # (rows, N)
        if mask_ids is not None:
            cand_ids, owner_qids, n_positive_cols = mask_ids
            false_neg = cand_ids.unsqueeze(0) == doc_ids.unsqueeze(1)     # same text as my positive
            if owner_qids is not None:                                    # positive of a copy of my query
                same_query = owner_qids.unsqueeze(0) == query_ids.unsqueeze(1)
                false_neg[:, :n_positive_cols] |= same_query
            false_neg[torch.arange(len(target)), target] = False
            scores = scores.masked_fill(false_neg, torch.finfo(scores.dtype).min)
        if weights is None:
            return F.cross_entropy(scores, target, reduction="sum")
        return (F.cross_entropy(scores, target, reduction="none") * weights).sum()
