"""Matryoshka representation loss: a contrastive loss applied to nested prefixes of the embedding.

For nested dimensions ``d_1 < d_2 < … < d_m`` with weights ``c_i``::

    L = Σ_i c_i · L_inner(q[:, :d_i], p[:, :d_i], n[:, :, :d_i])

so the first ``d_i`` coordinates of every vector are trained to be an embedding on their own: a model trained this
way can be truncated to any ``d_i`` (and re-normalised, ``fastemb.compress.matryoshka``) at index time and keeps
most of its quality. The inner loss sees the truncated vectors as if they were the model's output (InfoNCE with
cosine similarity normalises them itself), with its own gathering across workers and false-negative masking.

References: Kusupati et al., "Matryoshka Representation Learning" (NeurIPS 2022); sentence-transformers'
``MatryoshkaLoss`` (which wraps a loss the same way, e.g. MultipleNegativesRankingLoss).
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn


class MatryoshkaLoss(nn.Module):
    """Weighted sum of ``inner`` over nested prefixes of the embeddings; see module docstring."""

    def __init__(self, inner: nn.Module, dims: list[int], weights: list[float] | None = None):
        super().__init__()
        dims = list(dims)
        if not dims or dims[0] <= 0 or any(a >= b for a, b in zip(dims, dims[1:])):
            raise ValueError(f"matryoshka dims must be increasing positive integers, got {dims}")
        weights = [1.0] * len(dims) if weights is None else list(weights)
        if len(weights) != len(dims) or any(w <= 0 for w in weights):
            raise ValueError(f"matryoshka weights: one positive weight per dimension {dims}, got {weights}")
        self.inner, self.dims, self.weights = inner, dims, weights

    def terms(self, query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor | None = None,
              **ids) -> Iterator[torch.Tensor]:
        """Each dimension's weighted term ``c_i · L_inner(prefix d_i)``, computed as it is taken: the cached loss
        (fastemb/train/grad_cache.py) backpropagates them one at a time, holding one score matrix at a time."""
        width = query.shape[-1]
        if self.dims[-1] > width:
            raise ValueError(f"matryoshka dims {self.dims} exceed the embedding width {width}")
        for dim, weight in zip(self.dims, self.weights):
            n = negatives[..., :dim] if negatives is not None else None
            yield weight * self.inner(query[..., :dim], positive[..., :dim], n, **ids)

    def forward(self, query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor | None = None,
                **ids) -> torch.Tensor:
        """query, positive: (B, d); negatives: (B, k, d) or None; ``ids`` go to the inner loss unchanged."""
        total = query.new_zeros(())
        for term in self.terms(query, positive, negatives, **ids):
            total = total + term
        return total
