"""Distillation inside the training loop: the student with its loss heads, the online teacher, the combined loss.

Per micro-batch (``DistillObjective``)::

    L = w_nce·InfoNCE + Σ_term w_term·term        (terms: fastemb/train/distill_terms.py)

The configured terms say what they need: the objective embeds the queries, positives and hard negatives with the
student, stacks the stored teacher columns they read (``fastemb/train/teacher_outputs.py``) and, for per-token terms
(hidden states, attention), runs the frozen teacher online (``torch.no_grad``, eval mode) on the student's token ids
of the queries and positives; both need the same vocabulary (``check_online_teacher`` verifies it and asks each
per-token term for its own conditions before training starts).

The terms' trainable parts (projections) live in ``DistillModel.heads`` next to the student, so DeepSpeed optimises
and checkpoints them with it; the export is ``DistillModel.student`` alone.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from fastemb.losses.attention_distill import run_with_last_attention
from fastemb.model.encoder import Encoder, _read_st_layout, resolve_model_path
from fastemb.spec import SpecError, TrainJob
from fastemb.train.distill_terms import (TEACHER_SCORES, DistillBatch, TokenPass, configured_terms, hf_config,
                                         needs_online_teacher)


def check_online_teacher(spec: TrainJob) -> None:
    """Before training: per-token terms need the teacher's vocabulary, and each its own conditions (heads, layers)."""
    terms = [term for term in configured_terms(spec) if term.online]
    if not terms:
        return
    from transformers import AutoTokenizer

    d = spec.distill
    vocab = {}
    for name in (spec.model.base, d.teacher):
        path = Path(resolve_model_path(name))
        vocab[name] = AutoTokenizer.from_pretrained(path / _read_st_layout(path)[0], local_files_only=True).get_vocab()
    if vocab[spec.model.base] != vocab[d.teacher]:
        raise SpecError(f"invalid job spec:\n  distill.{terms[0].name}: per-token distillation needs the teacher's "
                        f"tokenizer, but {d.teacher!r} and the student {spec.model.base!r} have different "
                        "vocabularies; use kl / margin_mse / embedding_mse with this teacher")
    s_cfg, t_cfg = hf_config(spec.model.base), hf_config(d.teacher)
    for term in terms:
        term.check(s_cfg, t_cfg)


class DistillModel(nn.Module):
    """The student and the trainable parts of the distillation losses (projections), optimised together."""

    def __init__(self, student: Encoder, heads: nn.ModuleDict):
        super().__init__()
        self.student = student
        self.heads = heads


def build_distill_model(spec: TrainJob, student: Encoder) -> DistillModel:
    """Wrap ``student`` with the heads of the terms that have trainable parts (embedding MSE, hidden-state)."""
    t_cfg = hf_config(spec.distill.teacher)
    heads = nn.ModuleDict()
    for term in configured_terms(spec):
        head = term.make_head(student, t_cfg)
        if head is not None:
            heads[term.name] = head
    return DistillModel(student, heads)


def load_online_teacher(spec: TrainJob) -> Encoder | None:
    """The frozen teacher for per-token terms (None when no term needs it)."""
    d = spec.distill
    if d is None or not needs_online_teacher(spec):
        return None
    teacher = Encoder.load(d.teacher, pooling=d.teacher_pooling, max_length=d.teacher_max_length,
                           synonyms=spec.model.synonyms).eval()
    teacher.requires_grad_(False)
    return teacher


def _stack(batch: list[dict], column: str, device) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(r[column], dtype=np.float32) for r in batch])).to(device)


class DistillObjective:
    """The weighted sum of InfoNCE (``infonce``: the loss section's, Matryoshka-wrapped when it says so) and the
    configured distillation terms for one micro-batch."""

    def __init__(self, spec: TrainJob, model: DistillModel, infonce: nn.Module, teacher: Encoder | None):
        self.spec, self.d, self.model, self.infonce, self.teacher = spec, spec.distill, model, infonce, teacher
        self.k = spec.loss.hard_negatives
        # per-token terms come out of the forward passes, so they are summed (and listed) first
        self.terms = sorted(configured_terms(spec), key=lambda term: not term.online)
        self.columns = list(dict.fromkeys(c for term in self.terms for c in term.stored_columns))
        self.online = frozenset().union(*(term.online for term in self.terms))
        if self.online and teacher is None:
            raise ValueError(f"distill: {sorted(self.online)} need the online teacher (load_online_teacher)")
        short = [term.name for term in self.terms if term.needs_hard_negatives and self.k < 1]
        if short:
            raise ValueError(f"distill.{short[0]}: needs hard negatives (loss.hard_negatives >= 1)")

    def _token_pass(self, texts: list[str]) -> tuple[torch.Tensor, TokenPass]:
        """Student embeddings of ``texts`` and the student's and online teacher's per-token outputs."""
        student = self.model.student
        device = next(student.parameters()).device
        tok = {k: v.to(device) for k, v in student.tokenize(texts).items()}
        ids, mask = tok["input_ids"], tok["attention_mask"]
        hidden = "hidden_states" in self.online

        def run(model: nn.Module):
            if "attentions" in self.online:
                return run_with_last_attention(model, ids, mask, output_hidden_states=hidden)
            return model(input_ids=ids, attention_mask=mask, output_hidden_states=hidden), None

        out, values = run(student.transformer)
        with torch.no_grad():
            t_out, t_values = run(self.teacher.transformer)
        return student.pool(out.last_hidden_state, mask), TokenPass(out, t_out, values, t_values, mask)

    def _batch(self, batch: list[dict], ids: dict[str, torch.Tensor]) -> DistillBatch:
        """The student's embeddings, the stored teacher columns and (per-token terms) the online passes."""
        missing = [c for c in self.columns if c not in batch[0]]
        if missing:
            raise KeyError(f"distill: the training rows lack the teacher outputs {missing}; they are added by "
                           "fastemb.train.teacher_outputs.compute_teacher_outputs (run_train does it)")
        student, k = self.model.student, self.k
        if self.online:
            (q, q_pass), (p, p_pass) = (self._token_pass([r[side] for r in batch]) for side in ("query", "positive"))
            tokens = (q_pass, p_pass)
        else:
            q, p, tokens = student.embed([r["query"] for r in batch]), student.embed([r["positive"] for r in batch]), ()
        n = student.embed([x for r in batch for x in r["negatives"][:k]]).view(len(batch), k, -1) if k else None
        teacher = {c: _stack(batch, c, q.device) for c in self.columns}
        if TEACHER_SCORES in teacher:  # the positive's and the k hard negatives' scores
            teacher[TEACHER_SCORES] = teacher[TEACHER_SCORES][:, : 1 + k]
        return DistillBatch(q, p, n, ids, teacher, tokens)

    def __call__(self, batch: list[dict], ids: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """(total loss, each unweighted term as a float) for a micro-batch of rows with teacher columns."""
        b = self._batch(batch, ids)
        terms: dict[str, torch.Tensor] = {}
        weights: dict[str, float] = {}
        if self.d.infonce_weight > 0:
            terms["infonce"], weights["infonce"] = self.infonce(b.q, b.p, b.n, **ids), self.d.infonce_weight
        heads = self.model.heads
        for term in self.terms:
            terms[term.name] = term.value(b, heads[term.name] if term.name in heads else None)
            weights[term.name] = term.weight
        total = sum(weights[name] * value for name, value in terms.items())
        return total, {name: float(value.detach()) for name, value in terms.items()}
