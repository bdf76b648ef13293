"""Distillation terms as objects (fastemb/train/distill_terms.py): the objective with every term configured equals a
direct computation from the losses, loss and gradients; the registry covers the spec's term fields; what each term
declares agrees with the spec's rules and decides what is stored, loaded and trained."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fastemb.losses import (AttentionDistillLoss, DistillKLLoss, EmbeddingMSELoss, HiddenStateDistillLoss,
                            InfoNCELoss, MarginMSELoss)
from fastemb.losses.attention_distill import run_with_last_attention
from fastemb.model.encoder import Encoder
from fastemb.model.layers import keep_layers
from fastemb.spec import SpecError, parse_spec
from fastemb.train.batching import batch_hashes
from fastemb.train.distill_terms import (TEACHER_EMBEDDINGS, TEACHER_SCORES, TERMS, configured_terms,
                                         needs_online_teacher, term_names)

ALL_TERMS = {"kl": {"weight": 0.7, "temperature": 0.1}, "margin_mse": {"weight": 0.3},
             "embedding_mse": {"weight": 2.0, "project": True}, "hidden_state": {"weight": 0.4},
             "attention": {"weight": 0.6}}


def _rows(k: int, teacher_dim: int) -> list[dict]:
    rng = np.random.default_rng(0)
    positives = ["a dog", "a cat", "a dog", "a bright star"]  # rows 0 and 2 share their positive
    return [{"query": f"query {i} about a thing", "positive": p,
             "negatives": [f"negative {i}", f"another text {i} here"][:k],
             "teacher_scores": rng.normal(size=1 + k).astype(np.float32),
             "teacher_query": rng.normal(size=teacher_dim).astype(np.float32),
             "teacher_positive": rng.normal(size=teacher_dim).astype(np.float32)} for i, p in enumerate(positives)]


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def test_objective_with_every_term_equals_the_direct_computation(minilm_path):
    """MiniLM teaches a 2-layer subset of itself; the total and every gradient (student and heads) equal those of
    the formula written out with the losses, term by term, in the same order."""
    from fastemb.train.distill import DistillObjective, build_distill_model, load_online_teacher

    k = 2
    spec = parse_spec({"model": {"max_length": 16, "keep_layers": [0, 3]}, "loss": {"hard_negatives": k},
                       "distill": {"teacher": minilm_path, "infonce_weight": 0.5, **ALL_TERMS}})
    student = Encoder.load(minilm_path, max_length=16)
    keep_layers(student.transformer, [0, 3])
    model = build_distill_model(spec, student).eval()  # no dropout: both computations see the same network
    assert set(model.heads) == {"embedding_mse", "hidden_state"}
    teacher = load_online_teacher(spec)
    rows = _rows(k, teacher.dim)
    ids = {name: torch.from_numpy(v) for name, v in batch_hashes(rows, k).items()}
    infonce = InfoNCELoss(0.05, "cosine", False, True)

    total, terms = DistillObjective(spec, model, infonce, teacher)(rows, ids)
    total.backward()
    objective_grads = _grads(model)

    sides = []
    for texts in ([r["query"] for r in rows], [r["positive"] for r in rows]):
        tok = student.tokenize(texts)
        out, values = run_with_last_attention(student.transformer, tok["input_ids"], tok["attention_mask"], True)
        with torch.no_grad():
            t_out, t_values = run_with_last_attention(teacher.transformer, tok["input_ids"], tok["attention_mask"],
                                                      True)
        sides.append((student.pool(out.last_hidden_state, tok["attention_mask"]), out, t_out, values, t_values,
                      tok["attention_mask"]))
    (q, *q_side), (p, *p_side) = sides
    n = student.embed([x for r in rows for x in r["negatives"]]).view(len(rows), k, -1)
    t_scores = torch.tensor(np.stack([r["teacher_scores"] for r in rows]))
    t_q, t_p = (torch.tensor(np.stack([r[c] for r in rows])) for c in TEACHER_EMBEDDINGS)
    hidden_head, embedding_head = model.heads["hidden_state"], model.heads["embedding_mse"]
    assert isinstance(hidden_head, HiddenStateDistillLoss) and isinstance(embedding_head, EmbeddingMSELoss)
    attention = AttentionDistillLoss(True)
    doc = ids["doc_ids"]

    def kl() -> torch.Tensor:  # candidates: the pair's positive and negatives, then the other queries' positives
        pair_cands = torch.cat([p.unsqueeze(1), n], 1)
        cands = torch.cat([pair_cands, p.unsqueeze(0).expand(4, 4, p.shape[-1])], 1)
        mask = torch.cat([torch.ones(4, 1 + k, dtype=torch.bool), doc.unsqueeze(0) != doc.unsqueeze(1)], 1)
        return DistillKLLoss(0.1, None, "cosine")(q, cands, torch.cat([t_scores, t_q @ t_p.T], 1), mask)

    direct = {"infonce": infonce(q, p, n, **ids)}  # built in the objective's order (autograd sums in that order)
    direct["hidden_state"] = sum(hidden_head(s.hidden_states, t.hidden_states, m)
                                 for s, t, _, _, m in (q_side, p_side)) / 2
    direct["attention"] = sum(attention(s.attentions[-1], t.attentions[-1], v, tv, m)
                              for s, t, v, tv, m in (q_side, p_side)) / 2
    direct["kl"] = kl()
    direct["margin_mse"] = MarginMSELoss("cosine")(q, p, n, t_scores)
    direct["embedding_mse"] = embedding_head(torch.cat([q, p]), torch.cat([t_q, t_p]))
    weights = {"infonce": 0.5, **{name: section["weight"] for name, section in ALL_TERMS.items()}}
    direct_total = sum(weights[name] * value for name, value in direct.items())
    direct_total.backward()
    direct_grads = _grads(model)

    assert list(terms) == list(direct)
    assert terms == {name: float(value.detach()) for name, value in direct.items()}
    assert torch.equal(total.detach(), direct_total.detach())
    assert objective_grads.keys() == direct_grads.keys()
    assert not list(hidden_head.parameters())  # equal widths: no projection for the hidden states
    assert any(name.startswith("heads.embedding_mse") for name in objective_grads)
    for name, grad in objective_grads.items():
        assert torch.equal(grad, direct_grads[name]), name


def test_registry_covers_the_spec_term_fields_in_order():
    assert term_names() == list(TERMS) == ["kl", "margin_mse", "embedding_mse", "hidden_state", "attention"]
    spec = parse_spec({"loss": {"hard_negatives": 1}, "distill": {"attention": {}, "kl": {}}})
    assert [term.name for term in configured_terms(spec)] == ["kl", "attention"]
    assert configured_terms(parse_spec({})) == []


@pytest.mark.parametrize("name", list(TERMS))
def test_term_declarations_agree_with_the_spec_rules(name):
    """What a term declares (hard negatives, stored teacher scores, the online teacher) is what the spec's own rules
    (fastemb/spec.py) demand of it: a term added on one side only fails here."""
    sections = [{}] + ([{"in_batch": False}] if name == "kl" else [])
    for section in sections:
        spec = parse_spec({"loss": {"hard_negatives": 1}, "distill": {name: section}})
        (term,) = configured_terms(spec)
        assert term.weight == 1.0
        assert spec.distill.online_teacher == needs_online_teacher(spec) == bool(term.online)
        without_negatives = {"loss": {"hard_negatives": 0}, "distill": {name: section}}
        if term.needs_hard_negatives:
            with pytest.raises(SpecError, match=f"distill.{name}"):
                parse_spec(without_negatives)
        else:
            parse_spec(without_negatives)
        refreshed = {"loss": {"hard_negatives": 1}, "negatives_pool": {"refresh_every": 2}, "distill": {name: section}}
        if TEACHER_SCORES in term.stored_columns:
            with pytest.raises(SpecError, match="negatives_pool"):
                parse_spec(refreshed)
        else:
            parse_spec(refreshed)


def test_stored_columns_follow_the_configured_terms():
    from fastemb.train.teacher_outputs import needs_teacher_embeddings

    def spec(**terms):
        return parse_spec({"loss": {"hard_negatives": 1}, "distill": terms})

    assert not needs_teacher_embeddings(spec(kl={"in_batch": False}, margin_mse={}, attention={}))
    assert needs_teacher_embeddings(spec(kl={}))
    assert needs_teacher_embeddings(spec(embedding_mse={}))
    assert not needs_teacher_embeddings(spec(hidden_state={}))


def test_objective_names_missing_teacher_columns_and_a_missing_online_teacher(minilm_path):
    from fastemb.train.distill import DistillObjective, build_distill_model

    spec = parse_spec({"model": {"max_length": 16}, "loss": {"hard_negatives": 1},
                       "distill": {"teacher": minilm_path, "margin_mse": {}, "embedding_mse": {}, "attention": {}}})
    model = build_distill_model(spec, Encoder.load(minilm_path, max_length=16))
    infonce = InfoNCELoss(0.05, "cosine", False, True)
    with pytest.raises(ValueError, match="online teacher"):
        DistillObjective(spec, model, infonce, None)
    objective = DistillObjective(spec, model, infonce, model.student)
    assert objective.columns == [TEACHER_SCORES, *TEACHER_EMBEDDINGS]
    rows = [{k: v for k, v in r.items() if k != "teacher_positive"} for r in _rows(1, 384)]
    with pytest.raises(KeyError, match="teacher_positive"):
        objective(rows, {})


def test_per_token_checks_come_from_the_terms(minilm_path):
    from fastemb.train.distill import check_online_teacher

    check_online_teacher(parse_spec({"model": {"keep_layers": [0, 3]},
                                     "distill": {"teacher": minilm_path, "hidden_state": {}, "attention": {}}}))
    bad_map = parse_spec({"model": {"keep_layers": [0, 3]},
                          "distill": {"teacher": minilm_path, "hidden_state": {"layer_map": {2: 6, 3: 6}}}})
    with pytest.raises(SpecError, match="distill.hidden_state.layer_map"):
        check_online_teacher(bad_map)
