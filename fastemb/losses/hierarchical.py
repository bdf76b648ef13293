"""Hierarchical InfoNCE for long documents: a chunk-level term plus a document-level term.

A batch holds B queries ``q_i`` and their documents, each document ``D_j`` cut into chunks ``c_{j,1..m_j}``
(fastemb/data/long_docs.py); ``s`` is cosine similarity (or dot product), ``τ`` the temperature, and every document of
the *global* batch is a candidate (chunk vectors all-gathered across workers with their gradient, as InfoNCE does).

Chunk level (local semantics): the query against every chunk. The positive is the document's best chunk, or the
chunks pooled by the query's attention; the negatives are the chunks of the other documents (the document's own other
chunks are neither: they may or may not hold the answer)::

    p_i = max_m s(q_i, c_{i,m}) / τ                                  (positive: max)
    p_i = Σ_m a_{i,m} s(q_i, c_{i,m}) / τ,  a_i = softmax_m(s(q_i, c_{i,m}) / τ)      (positive: attention)
    L_chunk,i = -p_i + log( exp(p_i) + Σ_{j≠i} Σ_m exp(s(q_i, c_{j,m}) / τ) )

Document level (global semantics): the query against pooled document vectors ``d_j = mean_m c_{j,m}`` (with cosine,
the mean of the unit chunk vectors, normalised again)::

    L_doc,i = -log( exp(s(q_i, d_i) / τ) / Σ_j exp(s(q_i, d_j) / τ) )

    L = w_chunk · mean_i L_chunk,i + w_doc · mean_i L_doc,i

``w_chunk = 0`` or ``w_doc = 0`` gives the single-level losses. As in InfoNCE (fastemb/losses/infonce.py),
candidates with the same document text as the positive, or whose query has the same text as this query, are false
negatives and are masked (text hashes).

References: Dai & Callan, "Deeper Text Understanding for IR with Contextual Neural Language Modeling" (SIGIR 2019;
MaxP: a document scored by its best passage); Yang et al., "Hierarchical Attention Networks for Document
Classification" (NAACL 2016; attention pooling of sentences into a document); Li et al., "PARADE: Passage
Representation Aggregation for Document Reranking" (2020; passage representations aggregated into a document's);
van den Oord et al. (2018, InfoNCE); Karpukhin et al. (DPR, 2020, in-batch negatives).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fastemb.losses.gather import all_gather_no_grad, all_gather_with_grad, rank_and_world, same_text_mask

Positive = Literal["max", "attention"]


class HierarchicalInfoNCELoss(nn.Module):
    """Chunk-level plus document-level InfoNCE over (query, document chunks); see the module docstring."""

    def __init__(self, temperature: float = 0.05, chunk_weight: float = 1.0, doc_weight: float = 1.0,
                 positive: Positive = "max", similarity: Literal["cosine", "dot"] = "cosine",
                 gather_across_workers: bool = True, mask_false_negatives: bool = True):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if chunk_weight < 0 or doc_weight < 0 or chunk_weight + doc_weight == 0:
            raise ValueError(f"weights must be >= 0 and not both 0, got chunk {chunk_weight}, doc {doc_weight}")
        if positive not in ("max", "attention"):
            raise ValueError(f"positive must be 'max' or 'attention', got {positive!r}")
        if similarity not in ("cosine", "dot"):
            raise ValueError(f"similarity must be 'cosine' or 'dot', got {similarity!r}")
        self.temperature, self.chunk_weight, self.doc_weight = temperature, chunk_weight, doc_weight
        self.positive, self.similarity = positive, similarity
        self.gather, self.mask_false_negatives = gather_across_workers, mask_false_negatives

    def forward(self, query: torch.Tensor, chunks: torch.Tensor, chunk_mask: torch.Tensor,
                query_ids: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, float]]:
        """query: (B, d); chunks: (B, C, d), padded; chunk_mask: (B, C), true for real chunks (each row has one).
        ``query_ids``, ``doc_ids``: (B,) int64 text hashes for false-negative masking (optional).

        Returns the weighted loss and its unweighted terms ``{"chunk": ..., "doc": ...}`` (those with a weight)."""
        batch, n_chunks, dim = chunks.shape
        gather = all_gather_with_grad if self.gather else (lambda t: t)
        gather_ids = all_gather_no_grad if self.gather else (lambda t: t)
        rank, _ = rank_and_world() if self.gather else (0, 1)
        if self.similarity == "cosine":
            query, chunks = F.normalize(query, dim=-1), F.normalize(chunks, dim=-1)
        all_chunks = gather(chunks.reshape(batch * n_chunks, dim)).view(-1, n_chunks, dim)   # (N, C, d)
        all_mask = gather_ids(chunk_mask.to(torch.int64)).bool()                             # (N, C)
        target = torch.arange(batch, device=query.device) + rank * batch
        false_neg = same_text_mask(target, all_chunks.shape[0], doc_ids if self.mask_false_negatives else None,
                                   query_ids, gather_ids)                                     # (B, N)
        own = torch.zeros_like(false_neg)
        own[torch.arange(batch), target] = True
        terms, loss = {}, query.new_zeros(())
        if self.chunk_weight > 0:
            term = self._chunk_term(query, all_chunks, all_mask, target, own, false_neg)
            terms["chunk"], loss = term.item(), loss + self.chunk_weight * term
        if self.doc_weight > 0:
            term = self._doc_term(query, all_chunks, all_mask, target, false_neg)
            terms["doc"], loss = term.item(), loss + self.doc_weight * term
        return loss, terms

    def _chunk_term(self, query, all_chunks, all_mask, target, own, false_neg) -> torch.Tensor:
        """Mean over queries of L_chunk (the positive: the best or the attention-pooled own chunk)."""
        neg_inf = torch.finfo(query.dtype).min
        scores = torch.einsum("bd,ncd->bnc", query, all_chunks) / self.temperature           # (B, N, C)
        scores = scores.masked_fill(~all_mask.unsqueeze(0), neg_inf)
        mine = scores[torch.arange(len(target)), target]                                     # (B, C)
        if self.positive == "max":
            positive = mine.max(dim=1).values
        else:
            weights = torch.softmax(mine, dim=1)  # padded chunks: exp(min) = 0
            positive = (weights * mine.masked_fill(~all_mask[target], 0.0)).sum(dim=1)
        negatives = scores.masked_fill((own | false_neg).unsqueeze(-1), neg_inf).flatten(1)  # (B, N·C)
        logits = torch.cat([positive.unsqueeze(1), negatives], dim=1)
        return (torch.logsumexp(logits, dim=1) - positive).mean()

    def _doc_term(self, query, all_chunks, all_mask, target, false_neg) -> torch.Tensor:
        """Mean over queries of L_doc (documents as the mean of their chunk vectors)."""
        m = all_mask.unsqueeze(-1).to(all_chunks.dtype)
        docs = (all_chunks * m).sum(1) / m.sum(1).clamp(min=1.0)                            # (N, d)
        if self.similarity == "cosine":
            docs = F.normalize(docs, dim=-1)
        scores = (query @ docs.T / self.temperature).masked_fill(false_neg, torch.finfo(query.dtype).min)
        return F.cross_entropy(scores, target)
