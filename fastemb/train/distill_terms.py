"""The distillation terms: each ties a ``distill.<name>`` spec section to its loss in ``fastemb/losses/``.

A term object declares what it needs and computes its value from a shared per-batch context (``DistillBatch``):

* ``stored_columns``: teacher outputs stored next to the pairs (``fastemb/train/teacher_outputs.py``):
  ``teacher_scores`` (the teacher's scores of the pair's positive and hard negatives) and ``teacher_query`` /
  ``teacher_positive`` (its embeddings);
* ``online``: per-token outputs of the teacher run online in the loop (``hidden_states``, ``attentions``);
* ``make_head``: trainable parts (projections), optimised and checkpointed with the student;
* ``needs_hard_negatives``: whether it needs candidates besides the positive from the pairs' hard negatives;
* ``check``: what must hold between student and teacher before training (per-token terms).

``TERMS`` registers them, one line a term; the names are ``DistillSpec``'s term fields (``term_names``). Adding a
term: its loss in ``fastemb/losses/`` (formula, paper, test against a loop reference), its section in the spec, a
``DistillTerm`` here and its line in ``TERMS``. The objective (``fastemb.train.distill.DistillObjective``) sums
``weight × value`` over the configured terms; the teacher outputs stored are the union of their needs.

The term objects live here rather than in ``fastemb/losses/`` because they read the job spec, raise ``SpecError``
naming its fields and know the stored columns' names: the losses stay plain tensor functions that import no job.
"""
from __future__ import annotations

import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from fastemb.losses import AttentionDistillLoss, DistillKLLoss, EmbeddingMSELoss, HiddenStateDistillLoss, MarginMSELoss
from fastemb.losses.hidden_state import uniform_layer_map
from fastemb.model.encoder import Encoder, hf_config
from fastemb.model.layers import evenly_spaced_layers
from fastemb.spec import DistillSpec, SpecError, TrainJob

TEACHER_SCORES = "teacher_scores"
TEACHER_EMBEDDINGS = ("teacher_query", "teacher_positive")
TEACHER_POSITIVE = TEACHER_EMBEDDINGS[1]


@dataclass
class TokenPass:
    """One side of the pairs (queries or positives) through the student and the online teacher, per token."""
    student: Any  # the student transformer's output (hidden states and/or attentions, as the terms need)
    teacher: Any  # the teacher's, on the same token ids
    student_values: torch.Tensor | None  # last layer's value vectors (B, H, L, d_k) when a term needs attentions
    teacher_values: torch.Tensor | None
    mask: torch.Tensor  # (B, L) attention mask


@dataclass
class DistillBatch:
    """What the terms compute from, for one micro-batch."""
    q: torch.Tensor  # student embeddings of the queries (B, d)
    p: torch.Tensor  # of the positives (B, d)
    n: torch.Tensor | None  # of the hard negatives (B, k, d)
    ids: dict[str, torch.Tensor]  # text hashes: query_ids, doc_ids (B,), negative_ids (B, k)
    teacher: dict[str, torch.Tensor]  # stored teacher outputs: teacher_scores (B, 1 + k), teacher_query (B, D_t), …
    tokens: tuple[TokenPass, ...]  # (queries, positives) with the online teacher; () without per-token terms


class DistillTerm(ABC):
    """A ``distill.<name>`` term built from its spec section; see the module docstring."""
    stored: tuple[str, ...] = ()  # stored teacher columns it reads
    online: frozenset[str] = frozenset()  # the online teacher's per-token outputs it reads

    def __init__(self, name: str, section: BaseModel, spec: TrainJob):
        self.name, self.section, self.spec = name, section, spec

    @property
    def weight(self) -> float:
        return self.section.weight

    @property
    def stored_columns(self) -> tuple[str, ...]:
        return self.stored

    @property
    def needs_hard_negatives(self) -> bool:
        return False

    def check(self, student_config, teacher_config) -> None:
        """Before training: raise ``SpecError`` when the term cannot work with these models."""

    def make_head(self, student: Encoder, teacher_config) -> nn.Module | None:
        """The term's trainable part (None: it has none)."""
        return None

    @abstractmethod
    def value(self, batch: DistillBatch, head: nn.Module | None) -> torch.Tensor:
        """The unweighted term (``head``: what ``make_head`` built, as trained)."""


class PerTokenTerm(DistillTerm):
    """A term on the token outputs of student and online teacher: the mean of its query and positive sides."""

    def value(self, batch: DistillBatch, head: nn.Module | None) -> torch.Tensor:
        queries, positives = batch.tokens
        return (self.side_value(queries, head) + self.side_value(positives, head)) / 2

    @abstractmethod
    def side_value(self, side: TokenPass, head: nn.Module | None) -> torch.Tensor:
        """The term on one side's tokens."""


class KLDistillTerm(DistillTerm):
    """KL over each query's candidates: its positive, its hard negatives and (``in_batch``) the other queries'
    positives, duplicates of its own positive masked; in-batch teacher scores are ``t_q · t_p'``."""

    def __init__(self, name: str, section: BaseModel, spec: TrainJob):
        super().__init__(name, section, spec)
        self.loss = DistillKLLoss(section.temperature, section.teacher_temperature, spec.loss.similarity)

    @property
    def stored_columns(self) -> tuple[str, ...]:
        return (TEACHER_SCORES, *TEACHER_EMBEDDINGS) if self.section.in_batch else (TEACHER_SCORES,)

    @property
    def needs_hard_negatives(self) -> bool:
        return not self.section.in_batch

    def value(self, batch: DistillBatch, head: nn.Module | None) -> torch.Tensor:
        q, p, n, t_scores = batch.q, batch.p, batch.n, batch.teacher[TEACHER_SCORES]
        cands = torch.cat([p.unsqueeze(1), n], 1) if n is not None else p.unsqueeze(1)
        mask = torch.ones(cands.shape[:2], dtype=torch.bool, device=q.device)
        if self.section.in_batch:
            b = q.shape[0]
            t_q, t_p = (batch.teacher[c] for c in TEACHER_EMBEDDINGS)
            doc = batch.ids["doc_ids"].to(q.device)
            cands = torch.cat([cands, p.unsqueeze(0).expand(b, b, p.shape[-1])], 1)
            t_scores = torch.cat([t_scores, t_q @ t_p.T], 1)
            mask = torch.cat([mask, doc.unsqueeze(0) != doc.unsqueeze(1)], 1)
        return self.loss(q, cands, t_scores, mask)


class MarginMSEDistillTerm(DistillTerm):
    """MarginMSE on (positive, hard negatives) with the stored teacher scores."""
    stored = (TEACHER_SCORES,)

    def __init__(self, name: str, section: BaseModel, spec: TrainJob):
        super().__init__(name, section, spec)
        self.loss = MarginMSELoss(spec.loss.similarity)

    @property
    def needs_hard_negatives(self) -> bool:
        return True

    def value(self, batch: DistillBatch, head: nn.Module | None) -> torch.Tensor:
        return self.loss(batch.q, batch.p, batch.n, batch.teacher[TEACHER_SCORES])


class EmbeddingMSEDistillTerm(DistillTerm):
    """MSE of the student's query and positive embeddings (projected when the widths differ) onto the teacher's:
    each onto the teacher's embedding of the same text (``target: own``), or both onto the teacher's embedding of the
    positive (``target: positive``: multilingual distillation, the query being the positive's translation)."""

    @property
    def stored_columns(self) -> tuple[str, ...]:
        return (TEACHER_POSITIVE,) if self.section.target == "positive" else TEACHER_EMBEDDINGS

    def make_head(self, student: Encoder, teacher_config) -> nn.Module:
        return EmbeddingMSELoss(student.dim, int(teacher_config.hidden_size), self.section.project)

    def value(self, batch: DistillBatch, head: nn.Module | None) -> torch.Tensor:
        t = batch.teacher
        teacher = torch.cat([t[TEACHER_POSITIVE]] * 2 if self.section.target == "positive" else
                            [t[c] for c in TEACHER_EMBEDDINGS])
        return head(torch.cat([batch.q, batch.p]), teacher)


def student_layer_count(spec: TrainJob) -> int:
    """Transformer layers of the student (after ``model.keep_layers`` / ``model.num_layers``)."""
    m = spec.model
    if m.keep_layers is not None:
        return len(m.keep_layers)
    if m.num_layers is not None:
        return len(evenly_spaced_layers(hf_config(m.base).num_hidden_layers, m.num_layers))
    return int(hf_config(m.base).num_hidden_layers)


def layer_map(spec: TrainJob, student_layers: int, teacher_layers: int) -> dict[int, int]:
    """``distill.hidden_state.layer_map`` or the uniform map; indices checked against both models."""
    given = spec.distill.hidden_state.layer_map
    try:
        mapping = dict(given) if given else uniform_layer_map(student_layers, teacher_layers)
    except ValueError as err:
        raise SpecError(f"invalid job spec:\n  distill.hidden_state.layer_map: {err}") from None
    bad = {m: t for m, t in mapping.items() if not (0 <= m <= student_layers and 0 <= t <= teacher_layers)}
    if bad:
        raise SpecError(f"invalid job spec:\n  distill.hidden_state.layer_map: {bad} out of range; the student has "
                        f"hidden states 0..{student_layers}, the teacher 0..{teacher_layers}")
    return mapping


class HiddenStateDistillTerm(PerTokenTerm):
    """Hidden states of the mapped layers (TinyBERT), through learned projections when the widths differ."""
    online = frozenset({"hidden_states"})

    def check(self, student_config, teacher_config) -> None:
        layer_map(self.spec, student_layer_count(self.spec), int(teacher_config.num_hidden_layers))

    def make_head(self, student: Encoder, teacher_config) -> nn.Module:
        mapping = layer_map(self.spec, int(student.transformer.config.num_hidden_layers),
                            int(teacher_config.num_hidden_layers))
        return HiddenStateDistillLoss(mapping, student.dim, int(teacher_config.hidden_size))

    def side_value(self, side: TokenPass, head: nn.Module | None) -> torch.Tensor:
        return head(side.student.hidden_states, side.teacher.hidden_states, side.mask)


class AttentionDistillTerm(PerTokenTerm):
    """MiniLM last-layer attention (and value-relation) distillation."""
    online = frozenset({"attentions"})

    def __init__(self, name: str, section: BaseModel, spec: TrainJob):
        super().__init__(name, section, spec)
        self.loss = AttentionDistillLoss(section.value_relation)

    def check(self, student_config, teacher_config) -> None:
        if student_config.num_attention_heads != teacher_config.num_attention_heads:
            raise SpecError(f"invalid job spec:\n  distill.attention: the student has "
                            f"{student_config.num_attention_heads} heads, the teacher "
                            f"{teacher_config.num_attention_heads}; MiniLM attention distillation needs equal")

    def side_value(self, side: TokenPass, head: nn.Module | None) -> torch.Tensor:
        return self.loss(side.student.attentions[-1], side.teacher.attentions[-1], side.student_values,
                         side.teacher_values, side.mask)


TERMS: dict[str, type[DistillTerm]] = {
    "kl": KLDistillTerm,
    "margin_mse": MarginMSEDistillTerm,
    "embedding_mse": EmbeddingMSEDistillTerm,
    "hidden_state": HiddenStateDistillTerm,
    "attention": AttentionDistillTerm,
}


def term_names() -> list[str]:
    """``DistillSpec``'s term fields, in its order: the optional sections that carry a ``weight``."""
    names = []
    for name, field in DistillSpec.model_fields.items():
        types = typing.get_args(field.annotation) or (field.annotation,)
        if any(isinstance(t, type) and issubclass(t, BaseModel) and "weight" in t.model_fields for t in types):
            names.append(name)
    return names


def configured_terms(spec: TrainJob) -> list[DistillTerm]:
    """The terms the job's ``distill`` section gives, in ``DistillSpec``'s order ([] without distillation)."""
    if spec.distill is None:
        return []
    terms = []
    for name in term_names():
        section = getattr(spec.distill, name)
        if section is not None:
            if name not in TERMS:
                raise KeyError(f"distill.{name}: no term registered for it in fastemb.train.distill_terms.TERMS")
            terms.append(TERMS[name](name, section, spec))
    return terms


def needs_online_teacher(spec: TrainJob) -> bool:
    """Whether some configured term reads the online teacher's per-token outputs."""
    return any(term.online for term in configured_terms(spec))


def stored_teacher_columns(spec: TrainJob) -> list[str]:
    """The stored teacher columns the configured terms read (their union, in first-use order)."""
    return list(dict.fromkeys(c for term in configured_terms(spec) for c in term.stored_columns))
