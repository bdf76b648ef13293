"""Multi-view InfoNCE for items with several views (title, attributes, description, tags, ...).

A batch holds B queries ``q_i`` and their items, item ``j`` given by up to V views ``v_{j,1..V}`` (a view may be
missing: ``m_{j,a} = 0``); ``s`` is cosine similarity (or dot product), ``τ`` the temperature, ``w_a ≥ 0`` the
weight of view ``a``, and every item of the *global* batch is a candidate (view vectors all-gathered across workers
with their gradient, as InfoNCE does).

Query ↔ view (van den Oord et al. 2018's InfoNCE, one per view): the query against view ``a`` of every item that has
it; its own item's view is the positive::

    L_qa,i = -log( exp(s(q_i, v_{i,a}) / τ) / Σ_{j: m_{j,a}=1} exp(s(q_i, v_{j,a}) / τ) )
    L_query = Σ_i Σ_a m_{i,a} w_a L_qa,i / Σ_i Σ_a m_{i,a} w_a

View ↔ view (Tian et al. 2020's full-graph multi-view loss): each view of an item against another view of every
item, the same item's the positive, for every ordered pair of views ``a ≠ b`` both present::

    L_ab,i = -log( exp(s(v_{i,a}, v_{i,b}) / τ) / Σ_{j: m_{j,b}=1} exp(s(v_{i,a}, v_{j,b}) / τ) )
    L_view = Σ_i Σ_{a≠b} m_{i,a} m_{i,b} w_a w_b L_ab,i / Σ_i Σ_{a≠b} m_{i,a} m_{i,b} w_a w_b

    L = w_query · L_query + w_view · L_view

Each term is a weighted mean over what is present on this rank (a term with nothing present, e.g. a batch of
single-view items for the view ↔ view term, is 0), so items with missing views train with the views they have.
``w_view = 0`` gives the query ↔ view term alone. As in InfoNCE (fastemb/losses/infonce.py), candidate items with the
same item text (``item_ids``) as the positive, or whose query has the same text as this query (``query_ids``), are
false negatives and are masked.

References: van den Oord et al., "Representation Learning with Contrastive Predictive Coding" (2018, InfoNCE);
Tian, Krishnan & Isola, "Contrastive Multiview Coding" (ECCV 2020; the full-graph loss over every pair of views);
Karpukhin et al. (DPR, 2020, in-batch negatives).
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastemb.losses.gather import all_gather_no_grad, all_gather_with_grad, rank_and_world, same_text_mask


class MultiViewInfoNCELoss(nn.Module):
    """Query ↔ view plus view ↔ view InfoNCE over items with several views; see the module docstring."""

    def __init__(self, view_weights: Sequence[float], temperature: float = 0.05, query_weight: float = 1.0,
                 view_weight: float = 1.0, similarity: Literal["cosine", "dot"] = "cosine",
                 gather_across_workers: bool = True, mask_false_negatives: bool = True):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not view_weights or any(w < 0 for w in view_weights) or sum(view_weights) == 0:
            raise ValueError(f"view_weights must be >= 0, at least one > 0, got {list(view_weights)}")
        if query_weight < 0 or view_weight < 0 or query_weight + view_weight == 0:
            raise ValueError(f"weights must be >= 0 and not both 0, got query {query_weight}, view {view_weight}")
        if similarity not in ("cosine", "dot"):
            raise ValueError(f"similarity must be 'cosine' or 'dot', got {similarity!r}")
        self.register_buffer("view_weights", torch.tensor(list(view_weights), dtype=torch.float64), persistent=False)
        self.temperature, self.query_weight, self.view_weight = temperature, query_weight, view_weight
        self.similarity, self.gather = similarity, gather_across_workers
        self.mask_false_negatives = mask_false_negatives

    def forward(self, query: torch.Tensor, views: torch.Tensor, view_mask: torch.Tensor,
                query_ids: torch.Tensor | None = None, item_ids: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, float]]:
        """query: (B, d); views: (B, V, d), zeros where missing; view_mask: (B, V), true for present views.
        ``query_ids``, ``item_ids``: (B,) int64 text hashes for false-negative masking (optional).

        Returns the weighted loss and its unweighted terms ``{"query": ..., "view": ...}`` (those with a weight), and
        per view the query ↔ view term ``query_<index>`` (for the report's per-view figures)."""
        batch, n_views, dim = views.shape
        if n_views != len(self.view_weights):
            raise ValueError(f"{n_views} views in the batch, {len(self.view_weights)} view weights")
        gather = all_gather_with_grad if self.gather else (lambda t: t)
        gather_ids = all_gather_no_grad if self.gather else (lambda t: t)
        rank, _ = rank_and_world() if self.gather else (0, 1)
        if self.similarity == "cosine":
            query, views = F.normalize(query, dim=-1), F.normalize(views, dim=-1)
        all_views = gather(views.reshape(batch, n_views * dim)).view(-1, n_views, dim)       # (N, V, d)
        all_mask = gather_ids(view_mask.to(torch.int64)).bool()                              # (N, V)
        target = torch.arange(batch, device=query.device) + rank * batch
        false_neg = same_text_mask(target, all_views.shape[0], item_ids if self.mask_false_negatives else None,
                                   query_ids, gather_ids)                                     # (B, N)
        w = self.view_weights.to(device=query.device, dtype=query.dtype)
        mask = view_mask.to(query.dtype)                                                     # (B, V)
        terms, loss = {}, query.new_zeros(())
        if self.query_weight > 0:
            per = torch.stack([self._nce(query, all_views[:, a], all_mask[:, a], target, false_neg)
                               for a in range(n_views)], dim=1)                              # (B, V)
            term = _weighted_mean(per, mask * w)
            terms["query"], loss = term.item(), loss + self.query_weight * term
            for a in range(n_views):
                if mask[:, a].any():
                    terms[f"query_{a}"] = _weighted_mean(per[:, a].detach(), mask[:, a]).item()
        if self.view_weight > 0 and n_views > 1:
            per, weights = [], []
            for a in range(n_views):
                for b in range(n_views):
                    if a != b:
                        per.append(self._nce(views[:, a], all_views[:, b], all_mask[:, b], target, false_neg))
                        weights.append(mask[:, a] * mask[:, b] * w[a] * w[b])
            term = _weighted_mean(torch.stack(per, 1), torch.stack(weights, 1))
            terms["view"], loss = term.item(), loss + self.view_weight * term
        return loss, terms

    def _nce(self, anchor, candidates, present, target, false_neg) -> torch.Tensor:
        """(B,) cross-entropy of each anchor against the present candidates (N, d), its own item's the positive;
        rows whose positive is missing give a finite value that the caller's weight 0 drops."""
        neg_inf = torch.finfo(anchor.dtype).min
        scores = anchor @ candidates.T / self.temperature                                    # (B, N)
        scores = scores.masked_fill(false_neg | ~present.unsqueeze(0), neg_inf)
        own = scores.gather(1, target.unsqueeze(1)).squeeze(1)
        return torch.logsumexp(scores, dim=1) - own.clamp(min=neg_inf / 2)


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ w·x / Σ w, 0 when every weight is 0 (weight-0 entries contribute no gradient)."""
    values = torch.where(weights > 0, values, torch.zeros_like(values))   # rows without the positive: finite junk
    total = weights.sum()
    if total <= 0:
        return values.sum() * 0.0
    return (values * weights).sum() / total
