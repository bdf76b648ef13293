"""KL distillation of a teacher's score distribution over each query's candidates.

For query ``q_i`` with candidates ``c_i1 … c_iC`` (its positive and its negatives), the student's
scores ``s_ij = sim(q_i, c_ij)`` and the teacher's scores ``t_ij`` (e.g. a cross-encoder's or a
bigger bi-encoder's) are turned into distributions over the candidates::

    P^t_i = softmax_j(t_ij / T_t)        P^s_i = softmax_j(s_ij / T_s)
    L = (1/B) Σ_i KL(P^t_i ‖ P^s_i) = (1/B) Σ_i Σ_j P^t_ij (log P^t_ij − log P^s_ij)

``T_s`` is the student temperature (``temperature``) and ``T_t`` the teacher temperature
(``teacher_temperature``, default ``T_s``: right when the teacher's scores are similarities on the
student's scale; use 1.0 for cross-encoder logits). Candidates masked out (padding of queries with
fewer negatives) take no part in either distribution.

References: Ren et al., "RocketQAv2: A Joint Training Method for Dense Passage Retrieval and Passage
Re-ranking" (2021, KL between the retriever's and re-ranker's listwise distributions); Lin, Yang & Lin,
"Distilling Dense Representations for Ranking using Tightly-Coupled Teachers" (2020, TCT-ColBERT);
Hinton et al., "Distilling the Knowledge in a Neural Network" (2015, temperature); sentence-transformers'
DistillKLDivLoss and Tevatron's distillation trainer.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


def candidate_scores(query: torch.Tensor, candidates: torch.Tensor,
                     similarity: Literal["cosine", "dot"] = "cosine") -> torch.Tensor:
    """Scores of each query against its own candidates: query (B, d), candidates (B, C, d) → (B, C)."""
    if similarity == "cosine":
        query, candidates = F.normalize(query, dim=-1), F.normalize(candidates, dim=-1)
    return torch.einsum("bd,bcd->bc", query, candidates)


def kl_from_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over rows of KL(softmax(teacher) ‖ softmax(student)); ``mask`` (B, C) keeps True entries."""
    if mask is not None:
        if not bool(mask.any(dim=1).all()):
            raise ValueError("every query needs at least one unmasked candidate")
        fill = torch.finfo(student_logits.dtype).min
        student_logits = student_logits.masked_fill(~mask, fill)
        teacher_logits = teacher_logits.masked_fill(~mask, fill)
    log_s = F.log_softmax(student_logits, dim=-1)
    log_t = F.log_softmax(teacher_logits, dim=-1)
    p_t = log_t.exp()
    terms = p_t * (log_t - log_s)
    if mask is not None:
        terms = terms.masked_fill(~mask, 0.0)
    return terms.sum(dim=-1).mean()


class DistillKLLoss(nn.Module):
    """KL(teacher ‖ student) over each query's candidates; see the module docstring."""

    def __init__(self, temperature: float = 0.05, teacher_temperature: float | None = None,
                 similarity: Literal["cosine", "dot"] = "cosine"):
        super().__init__()
        if temperature <= 0 or (teacher_temperature is not None and teacher_temperature <= 0):
            raise ValueError(f"temperatures must be > 0, got {temperature}, {teacher_temperature}")
        if similarity not in ("cosine", "dot"):
            raise ValueError(f"similarity must be 'cosine' or 'dot', got {similarity!r}")
        self.temperature = temperature
        self.teacher_temperature = teacher_temperature if teacher_temperature is not None else temperature
        self.similarity = similarity

    def forward(self, query: torch.Tensor, candidates: torch.Tensor, teacher_scores: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """query (B, d); candidates (B, C, d), the positive first by convention; teacher_scores (B, C);
        mask (B, C) bool, False for padding candidates."""
        if teacher_scores.shape != candidates.shape[:2]:
            raise ValueError(f"teacher_scores {tuple(teacher_scores.shape)} must be (B, C) = "
                             f"{tuple(candidates.shape[:2])}")
        student = candidate_scores(query, candidates, self.similarity) / self.temperature
        teacher = teacher_scores.to(student.dtype) / self.teacher_temperature
        return kl_from_logits(student, teacher.detach(), mask)
