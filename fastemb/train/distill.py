"""Distillation inside the training loop: the student with its loss heads, the online teacher, the combined loss.

Per micro-batch (``DistillObjective``)::

    L = w_nce·InfoNCE + w_kl·KL + w_mm·MarginMSE + w_emb·EmbeddingMSE + w_hs·HiddenState + w_att·Attention

* **KL** over each query's candidates: its positive, its hard negatives and (``kl.in_batch``) the other queries'
  positives (duplicates of its own positive masked). Teacher scores of the positive and negatives come from the
  stored teacher outputs (``fastemb/train/teacher_outputs.py``); in-batch ones are ``t_q · t_p'`` from the stored
  teacher embeddings.
* **MarginMSE** on (positive, hard negatives) with the stored teacher scores.
* **Embedding MSE** of the student's query and positive embeddings (through a learned projection when the widths
  differ) onto the stored teacher embeddings.
* **Hidden-state** and **attention** terms are per token: the frozen teacher runs online (``torch.no_grad``, eval
  mode) on the student's token ids of the queries and positives; both need the same vocabulary
  (``check_online_teacher`` verifies it, the heads and the layer map before training starts).

The learned projections live in ``DistillModel.heads`` next to the student, so DeepSpeed optimises and
checkpoints them with it; the export is ``DistillModel.student`` alone.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from fastemb.losses import (AttentionDistillLoss, DistillKLLoss, EmbeddingMSELoss, HiddenStateDistillLoss,
                            InfoNCELoss, MarginMSELoss)
from fastemb.losses.attention_distill import run_with_last_attention
from fastemb.losses.hidden_state import uniform_layer_map
from fastemb.model.encoder import Encoder, _read_st_layout, resolve_model_path
from fastemb.model.layers import evenly_spaced_layers
from fastemb.spec import SpecError, TrainJob


def _hf_config(name_or_path: str):
    """The Hugging Face config of a model folder or alias (no weights loaded)."""
    from transformers import AutoConfig

    path = Path(resolve_model_path(name_or_path))
    return AutoConfig.from_pretrained(path / _read_st_layout(path)[0], local_files_only=True)


def student_layer_count(spec: TrainJob) -> int:
    """Transformer layers of the student (after ``model.keep_layers`` / ``model.num_layers``)."""
    m = spec.model
    if m.keep_layers is not None:
        return len(m.keep_layers)
    if m.num_layers is not None:
        return len(evenly_spaced_layers(_hf_config(m.base).num_hidden_layers, m.num_layers))
    return int(_hf_config(m.base).num_hidden_layers)


def layer_map(spec: TrainJob, student_layers: int, teacher_layers: int) -> dict[int, int]:
    """``distill.hidden_state.layer_map`` or the uniform map; indices checked against both models."""
    given = spec.distill.hidden_state.layer_map
    try:
        mapping = dict(given) if given else uniform_layer_map(student_layers, teacher_layers)
    except ValueError as err:
        raise SpecError(f"invalid job spec:\n  distill.hidden_state.layer_map: {err}") from None
    bad = {m: t for m, t in mapping.items() if not (0 <= m <= student_layers and 0 <= t <= teacher_layers)}
    if bad:
        raise SpecError(f"invalid job spec:\n  distill.hidden_state.layer_map: {bad} out of range: the student has "
                        f"hidden states 0..{student_layers}, the teacher 0..{teacher_layers}")
    return mapping


def check_online_teacher(spec: TrainJob) -> None:
    """Before training: per-token terms need the teacher's vocabulary (and heads, and a valid layer map)."""
    d = spec.distill
    if d is None or not d.online_teacher:
        return
    from transformers import AutoTokenizer

    term = "distill.hidden_state" if d.hidden_state else "distill.attention"
    vocab = {}
    for name in (spec.model.base, d.teacher):
        path = Path(resolve_model_path(name))
        vocab[name] = AutoTokenizer.from_pretrained(path / _read_st_layout(path)[0], local_files_only=True).get_vocab()
    if vocab[spec.model.base] != vocab[d.teacher]:
        raise SpecError(f"invalid job spec:\n  {term}: per-token distillation needs the teacher's tokenizer, but "
                        f"{d.teacher!r} and the student {spec.model.base!r} have different vocabularies; use "
                        "kl / margin_mse / embedding_mse with this teacher")
    s_cfg, t_cfg = _hf_config(spec.model.base), _hf_config(d.teacher)
    if d.attention and s_cfg.num_attention_heads != t_cfg.num_attention_heads:
        raise SpecError(f"invalid job spec:\n  distill.attention: the student has {s_cfg.num_attention_heads} "
                        f"heads, the teacher {t_cfg.num_attention_heads}; MiniLM attention distillation needs equal")
    if d.hidden_state:
        layer_map(spec, student_layer_count(spec), int(t_cfg.num_hidden_layers))


class DistillModel(nn.Module):
    """The student and the trainable parts of the distillation losses (projections), optimised together."""

    def __init__(self, student: Encoder, heads: nn.ModuleDict):
        super().__init__()
        self.student = student
        self.heads = heads


def build_distill_model(spec: TrainJob, student: Encoder) -> DistillModel:
    """Wrap ``student`` with the loss modules that have parameters (embedding MSE, hidden-state)."""
    d = spec.distill
    t_cfg = _hf_config(d.teacher)
    heads = nn.ModuleDict()
    if d.embedding_mse:
        heads["embedding_mse"] = EmbeddingMSELoss(student.dim, int(t_cfg.hidden_size), d.embedding_mse.project)
    if d.hidden_state:
        mapping = layer_map(spec, int(student.transformer.config.num_hidden_layers), int(t_cfg.num_hidden_layers))
        heads["hidden_state"] = HiddenStateDistillLoss(mapping, student.dim, int(t_cfg.hidden_size))
    return DistillModel(student, heads)


def load_online_teacher(spec: TrainJob) -> Encoder | None:
    """The frozen teacher for per-token terms (None when no term needs it)."""
    d = spec.distill
    if d is None or not d.online_teacher:
        return None
    teacher = Encoder.load(d.teacher, pooling=d.teacher_pooling, max_length=d.teacher_max_length,
                           synonyms=spec.model.synonyms).eval()
    teacher.requires_grad_(False)
    return teacher


def _stack(batch: list[dict], column: str, device) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(r[column], dtype=np.float32) for r in batch])).to(device)


class DistillObjective:
    """The weighted sum of InfoNCE and the configured distillation terms for one micro-batch."""

    def __init__(self, spec: TrainJob, model: DistillModel, infonce: InfoNCELoss, teacher: Encoder | None):
        d = spec.distill
        self.spec, self.d, self.model, self.infonce, self.teacher = spec, d, model, infonce, teacher
        self.k = spec.loss.hard_negatives
        self.kl = DistillKLLoss(d.kl.temperature, d.kl.teacher_temperature, spec.loss.similarity) if d.kl else None
        self.margin = MarginMSELoss(spec.loss.similarity) if d.margin_mse else None
        self.attention = AttentionDistillLoss(d.attention.value_relation) if d.attention else None
        self.columns = (["teacher_scores"] if d.kl or d.margin_mse else []) + \
            (["teacher_query", "teacher_positive"] if d.embedding_mse or (d.kl and d.kl.in_batch) else [])

    def _per_token(self, texts: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Student embeddings of ``texts`` and the per-token terms against the online teacher."""
        student = self.model.student
        device = next(student.parameters()).device
        tok = {k: v.to(device) for k, v in student.tokenize(texts).items()}
        ids, mask = tok["input_ids"], tok["attention_mask"]
        hidden = self.d.hidden_state is not None

        def run(model: nn.Module):
            if self.attention is not None:
                return run_with_last_attention(model, ids, mask, output_hidden_states=hidden)
            return model(input_ids=ids, attention_mask=mask, output_hidden_states=hidden), None

        out, values = run(student.transformer)
        with torch.no_grad():
            t_out, t_values = run(self.teacher.transformer)
        terms = {}
        if hidden:
            terms["hidden_state"] = self.model.heads["hidden_state"](out.hidden_states, t_out.hidden_states, mask)
        if self.attention is not None:
            terms["attention"] = self.attention(out.attentions[-1], t_out.attentions[-1], values, t_values, mask)
        return student.pool(out.last_hidden_state, mask), terms

    def _embed_pair_side(self, texts: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.teacher is None:
            return self.model.student.embed(texts), {}
        return self._per_token(texts)

    def __call__(self, batch: list[dict], ids: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """(total loss, each unweighted term as a float) for a micro-batch of rows with teacher columns."""
        d, k = self.d, self.k
        missing = [c for c in self.columns if c not in batch[0]]
        if missing:
            raise KeyError(f"distill: the training rows lack the teacher outputs {missing}; they are added by "
                           "fastemb.train.teacher_outputs.compute_teacher_outputs (run_train does it)")
        q, q_terms = self._embed_pair_side([r["query"] for r in batch])
        p, p_terms = self._embed_pair_side([r["positive"] for r in batch])
        n = self.model.student.embed([x for r in batch for x in r["negatives"][:k]]).view(len(batch), k, -1) \
            if k else None
        terms: dict[str, torch.Tensor] = {}
        weights: dict[str, float] = {}
        if d.infonce_weight > 0:
            terms["infonce"], weights["infonce"] = self.infonce(q, p, n, **ids), d.infonce_weight
        for name in q_terms:
            terms[name] = (q_terms[name] + p_terms[name]) / 2
            weights[name] = getattr(d, name).weight
        if self.kl is not None or self.margin is not None:
            t_scores = _stack(batch, "teacher_scores", q.device)[:, : 1 + k]
            if self.kl is not None:
                terms["kl"], weights["kl"] = self._kl(q, p, n, t_scores, batch, ids), d.kl.weight
            if self.margin is not None:
                terms["margin_mse"], weights["margin_mse"] = self.margin(q, p, n, t_scores), d.margin_mse.weight
        if d.embedding_mse:
            teacher = torch.cat([_stack(batch, "teacher_query", q.device), _stack(batch, "teacher_positive", q.device)])
            terms["embedding_mse"] = self.model.heads["embedding_mse"](torch.cat([q, p]), teacher)
            weights["embedding_mse"] = d.embedding_mse.weight
        total = sum(weights[name] * value for name, value in terms.items())
        return total, {name: float(value.detach()) for name, value in terms.items()}

    def _kl(self, q, p, n, t_scores, batch, ids) -> torch.Tensor:
        """KL over [positive, negatives, (other queries' positives)]; duplicates of the positive masked."""
        cands = torch.cat([p.unsqueeze(1), n], 1) if n is not None else p.unsqueeze(1)
        mask = torch.ones(cands.shape[:2], dtype=torch.bool, device=q.device)
        if self.d.kl.in_batch:
            b = q.shape[0]
            t_q, t_p = _stack(batch, "teacher_query", q.device), _stack(batch, "teacher_positive", q.device)
            doc = ids["doc_ids"].to(q.device)
            cands = torch.cat([cands, p.unsqueeze(0).expand(b, b, p.shape[-1])], 1)
            t_scores = torch.cat([t_scores, t_q @ t_p.T], 1)
            mask = torch.cat([mask, doc.unsqueeze(0) != doc.unsqueeze(1)], 1)
        return self.kl(q, cands, t_scores, mask)
