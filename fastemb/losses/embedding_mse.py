"""Embedding MSE: regress the student's sentence embedding onto the teacher's.

::

    L = (1 / (B·D_t)) Σ_i ‖ W s_i + b − t_i ‖²

where ``s_i`` is the student embedding (dimension ``D_s``), ``t_i`` the teacher embedding (``D_t``).
When ``D_s ≠ D_t`` a learned linear projection ``W, b`` (``D_s → D_t``) maps the student into the
teacher's space; its parameters belong to this loss module and must be optimised together with the
student (pass ``loss.parameters()`` to the optimizer). With equal dimensions no projection is used
unless ``project=True``. The teacher embeddings are constants (no gradient).

Reference: Reimers & Gurevych, "Making Monolingual Sentence Embeddings Multilingual using Knowledge
Distillation" (EMNLP 2020); sentence-transformers' MSELoss (with a Dense layer when dimensions differ).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EmbeddingMSELoss(nn.Module):
    """MSE between (projected) student embeddings and teacher embeddings; see the module docstring."""

    def __init__(self, student_dim: int, teacher_dim: int, project: bool | None = None):
        super().__init__()
        if student_dim <= 0 or teacher_dim <= 0:
            raise ValueError(f"dimensions must be > 0, got {student_dim}, {teacher_dim}")
        project = (student_dim != teacher_dim) if project is None else project
        if not project and student_dim != teacher_dim:
            raise ValueError(f"student dim {student_dim} ≠ teacher dim {teacher_dim}: a projection is needed")
        self.student_dim, self.teacher_dim = student_dim, teacher_dim
        self.projection: nn.Linear | None = nn.Linear(student_dim, teacher_dim) if project else None

    def project_student(self, student: torch.Tensor) -> torch.Tensor:
        """The student embeddings in the teacher's space."""
        return self.projection(student) if self.projection is not None else student

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """student (B, D_s); teacher (B, D_t)."""
        if student.shape[-1] != self.student_dim or teacher.shape[-1] != self.teacher_dim:
            raise ValueError(f"expected student (…, {self.student_dim}) and teacher (…, {self.teacher_dim}), "
                             f"got {tuple(student.shape)} and {tuple(teacher.shape)}")
        return F.mse_loss(self.project_student(student), teacher.to(student.dtype).detach())
