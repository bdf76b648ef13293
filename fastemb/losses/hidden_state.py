"""Intermediate-layer distillation: match the student's hidden states to mapped teacher layers.

With student layers ``m = 0 … M`` (0 is the embedding-layer output, as in Hugging Face's
``output_hidden_states``) and a layer mapping ``m → g(m)`` into the teacher's ``0 … N``::

    L = (1/|map|) Σ_{(m, g(m))} (1 / (|tokens|·D_t)) Σ_{b, l: mask_bl = 1} ‖ H^S_m[b, l] W + c − H^T_{g(m)}[b, l] ‖²

Padding tokens are excluded. When the hidden sizes differ, learned projections map the student into
the teacher's width as in TinyBERT: ``W_e`` for the embedding layer (m = 0) and one shared ``W_h`` for
the transformer layers; with equal widths no projection is used (unless ``project=True``). The
projections are parameters of this loss module: optimise them with the student.
``uniform_layer_map(M, N)`` gives TinyBERT's uniform strategy ``g(m) = m·N/M``.

Teacher and student must see the same token sequence (the same tokenizer, as for a student made by
keeping a subset of the teacher's layers); the shapes are checked.

Reference: Jiao et al., "TinyBERT: Distilling BERT for Natural Language Understanding" (Findings of
EMNLP 2020), embedding- and hidden-state losses; Sun et al., "Patient Knowledge Distillation" (2019).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn


def uniform_layer_map(student_layers: int, teacher_layers: int) -> dict[int, int]:
    """TinyBERT's uniform mapping {m: m·N/M} for m = 0 … M (0 ↦ 0 is the embedding layer)."""
    if not 0 < student_layers <= teacher_layers:
        raise ValueError(f"need 0 < student layers ≤ teacher layers, got {student_layers}, {teacher_layers}")
    if teacher_layers % student_layers:
        raise ValueError(f"uniform mapping needs teacher layers ({teacher_layers}) divisible by student "
                         f"layers ({student_layers}); give an explicit layer_map")
    step = teacher_layers // student_layers
    return {m: m * step for m in range(student_layers + 1)}


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error over the valid tokens (mask (B, L) of 1/0) and all features."""
    sq = (student - teacher).pow(2)                                     # (B, L, D)
    if mask is None:
        return sq.mean()
    m = mask.to(sq.dtype).unsqueeze(-1)
    return (sq * m).sum() / (m.sum() * sq.shape[-1]).clamp(min=1.0)


class HiddenStateDistillLoss(nn.Module):
    """TinyBERT-style hidden-state (and embedding-layer) distillation; see the module docstring."""

    def __init__(self, layer_map: Mapping[int, int], student_dim: int, teacher_dim: int,
                 project: bool | None = None):
        super().__init__()
        if not layer_map:
            raise ValueError("layer_map is empty")
        if any(m < 0 or t < 0 for m, t in layer_map.items()):
            raise ValueError(f"layer indices must be ≥ 0, got {dict(layer_map)}")
        project = (student_dim != teacher_dim) if project is None else project
        if not project and student_dim != teacher_dim:
            raise ValueError(f"student width {student_dim} ≠ teacher width {teacher_dim}: a projection is needed")
        self.layer_map = dict(sorted(layer_map.items()))
        self.student_dim, self.teacher_dim = student_dim, teacher_dim
        self.embedding_projection = nn.Linear(student_dim, teacher_dim) if project and 0 in self.layer_map else None
        self.hidden_projection = (nn.Linear(student_dim, teacher_dim)
                                  if project and any(m > 0 for m in self.layer_map) else None)

    def _project(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        proj = self.embedding_projection if layer == 0 else self.hidden_projection
        return proj(hidden) if proj is not None else hidden

    def forward(self, student_hidden: Sequence[torch.Tensor], teacher_hidden: Sequence[torch.Tensor],
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """student_hidden: M + 1 tensors (B, L, D_s); teacher_hidden: N + 1 tensors (B, L, D_t);
        attention_mask (B, L), 1 for real tokens."""
        losses = []
        for m, t in self.layer_map.items():
            if m >= len(student_hidden) or t >= len(teacher_hidden):
                raise ValueError(f"layer_map {m}→{t}: student has {len(student_hidden)} hidden states, "
                                 f"teacher {len(teacher_hidden)}")
            hs, ht = student_hidden[m], teacher_hidden[t]
            if hs.shape[:2] != ht.shape[:2]:
                raise ValueError(f"layer {m}→{t}: student {tuple(hs.shape)} and teacher {tuple(ht.shape)} must "
                                 "share (batch, tokens): use the same tokenizer and inputs")
            losses.append(masked_mse(self._project(m, hs), ht.to(hs.dtype).detach(), attention_mask))
        return torch.stack(losses).mean()
