"""MarginMSE: regress the student's score margins onto the teacher's.

For query ``q`` with positive ``p`` and negatives ``n_1 … n_k``, with student scores ``s`` and teacher
scores ``t``::

    L = (1 / (B·k)) Σ_i Σ_j ( (s(q_i, p_i) − s(q_i, n_ij)) − (t(q_i, p_i) − t(q_i, n_ij)) )²

Only margins are matched, so teacher and student scores may live on different scales as long as their
differences are comparable (Hofstätter et al. use dot-product students and cross-encoder logits).
With k = 1 this is exactly the paper's loss; with k > 1 the squared errors are averaged over negatives.

Reference: Hofstätter, Althammer, Schröder, Sertkan & Hanbury, "Improving Efficient Neural Ranking
Models with Cross-Architecture Knowledge Distillation" (2020); sentence-transformers' MarginMSELoss.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class MarginMSELoss(nn.Module):
    """MSE between student and teacher score margins s(q,p) − s(q,n); see the module docstring."""

    def __init__(self, similarity: Literal["cosine", "dot"] = "dot"):
        super().__init__()
        if similarity not in ("cosine", "dot"):
            raise ValueError(f"similarity must be 'cosine' or 'dot', got {similarity!r}")
        self.similarity = similarity

    def forward(self, query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
                teacher_scores: torch.Tensor) -> torch.Tensor:
        """query, positive (B, d); negatives (B, k, d); teacher_scores (B, 1 + k) = [t(q,p), t(q,n_1), …]."""
        if negatives.dim() != 3 or negatives.shape[1] == 0:
            raise ValueError(f"negatives must be (B, k, d) with k ≥ 1, got {tuple(negatives.shape)}")
        k = negatives.shape[1]
        if teacher_scores.shape != (query.shape[0], 1 + k):
            raise ValueError(f"teacher_scores {tuple(teacher_scores.shape)} must be (B, 1 + k) = "
                             f"{(query.shape[0], 1 + k)}")
        if self.similarity == "cosine":
            query, positive, negatives = (F.normalize(t, dim=-1) for t in (query, positive, negatives))
        s_pos = (query * positive).sum(-1, keepdim=True)                  # (B, 1)
        s_neg = torch.einsum("bd,bkd->bk", query, negatives)               # (B, k)
        teacher = teacher_scores.to(s_pos.dtype).detach()
        student_margin = s_pos - s_neg
        teacher_margin = teacher[:, :1] - teacher[:, 1:]
        return F.mse_loss(student_margin, teacher_margin)
