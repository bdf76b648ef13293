"""Distillation losses against independent reference computations (explicit loops / numpy): values and gradients."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastemb.losses import (AttentionDistillLoss, DistillKLLoss, EmbeddingMSELoss, HiddenStateDistillLoss,
                            MarginMSELoss)
from fastemb.losses.attention_distill import last_layer_attention
from fastemb.losses.hidden_state import uniform_layer_map


def _leaf(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)


def _cos(a, b):
    return (a @ b) / (torch.linalg.norm(a) * torch.linalg.norm(b))


def _assert_grads_match(loss, ref, inputs):
    for a, b in zip(torch.autograd.grad(loss, inputs, retain_graph=True), torch.autograd.grad(ref, inputs)):
        assert torch.allclose(a, b, atol=1e-10), (a - b).abs().max()


# ----------------------------------------------------------------------------- KL over candidates
def reference_kl(q, c, t, tau_s, tau_t, cosine=True, mask=None):
    """Loop: for each query, softmax of student and teacher scores over its (unmasked) candidates, then KL."""
    total = 0.0
    for i in range(q.shape[0]):
        keep = [j for j in range(c.shape[1]) if mask is None or mask[i][j]]
        s = [(_cos(q[i], c[i, j]) if cosine else q[i] @ c[i, j]) / tau_s for j in keep]
        tt = [t[i, j] / tau_t for j in keep]
        zs = sum(torch.exp(x) for x in s)
        zt = sum(torch.exp(x) for x in tt)
        for x_s, x_t in zip(s, tt):
            p_t, p_s = torch.exp(x_t) / zt, torch.exp(x_s) / zs
            total = total + p_t * (torch.log(p_t) - torch.log(p_s))
    return total / q.shape[0]


@pytest.mark.parametrize("cosine", [True, False])
def test_kl_matches_reference(cosine):
    q, c = _leaf(4, 6, seed=1), _leaf(4, 5, 6, seed=2)
    t = torch.randn(4, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    loss = DistillKLLoss(0.5, teacher_temperature=2.0, similarity="cosine" if cosine else "dot")(q, c, t)
    ref = reference_kl(q, c, t, 0.5, 2.0, cosine)
    assert torch.allclose(loss, ref, atol=1e-10)
    _assert_grads_match(loss, ref, (q, c))


def test_kl_numpy_value_and_masked_padding():
    q, c = _leaf(3, 4, seed=4), _leaf(3, 4, 4, seed=5)
    t = torch.randn(3, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False], [True, False, True, True]])
    loss = DistillKLLoss(0.1, similarity="dot")(q, c, t, mask)
    qn, cn, tn = q.detach().numpy(), c.detach().numpy(), t.numpy()
    want = 0.0
    for i in range(3):
        keep = mask[i].numpy()
        s = np.einsum("d,cd->c", qn[i], cn[i])[keep] / 0.1
        tt = tn[i][keep] / 0.1
        ps, pt = np.exp(s - s.max()) / np.exp(s - s.max()).sum(), np.exp(tt - tt.max()) / np.exp(tt - tt.max()).sum()
        want += float((pt * (np.log(pt) - np.log(ps))).sum())
    assert abs(loss.item() - want / 3) < 1e-9
    _assert_grads_match(loss, reference_kl(q, c, t, 0.1, 0.1, cosine=False, mask=mask.tolist()), (q, c))
    # Masked candidates get no gradient; a masked-out candidate changes nothing.
    (gc,) = torch.autograd.grad(DistillKLLoss(0.1, similarity="dot")(q, c, t, mask), (c,))
    assert torch.all(gc[1, 2:] == 0) and torch.all(gc[2, 1] == 0)


def test_kl_is_zero_when_student_matches_teacher_and_validates():
    q, c = _leaf(3, 4, seed=7), _leaf(3, 5, 4, seed=8)
    t = torch.einsum("bd,bcd->bc", q, c).detach()
    assert DistillKLLoss(0.3, similarity="dot")(q, c, t).abs().item() < 1e-12
    assert DistillKLLoss(0.3, similarity="dot")(q, c, t * 2).item() > 1e-3
    with pytest.raises(ValueError, match="temperatures"):
        DistillKLLoss(0.0)
    with pytest.raises(ValueError, match="teacher_scores"):
        DistillKLLoss()(q, c, t[:, :3])
    with pytest.raises(ValueError, match="unmasked"):
        DistillKLLoss()(q, c, t, torch.zeros(3, 5, dtype=torch.bool))


# ----------------------------------------------------------------------------- MarginMSE
def reference_margin_mse(q, p, n, t, cosine=False):
    total, count = 0.0, 0
    for i in range(q.shape[0]):
        sp = _cos(q[i], p[i]) if cosine else q[i] @ p[i]
        for j in range(n.shape[1]):
            sn = _cos(q[i], n[i, j]) if cosine else q[i] @ n[i, j]
            total = total + ((sp - sn) - (t[i, 0] - t[i, 1 + j])) ** 2
            count += 1
    return total / count


@pytest.mark.parametrize("cosine,k", [(False, 1), (False, 3), (True, 2)])
def test_margin_mse_matches_reference(cosine, k):
    q, p, n = _leaf(5, 6, seed=10), _leaf(5, 6, seed=11), _leaf(5, k, 6, seed=12)
    t = torch.randn(5, 1 + k, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    loss = MarginMSELoss("cosine" if cosine else "dot")(q, p, n, t)
    ref = reference_margin_mse(q, p, n, t, cosine)
    assert torch.allclose(loss, ref, atol=1e-10)
    _assert_grads_match(loss, ref, (q, p, n))


def test_margin_mse_ignores_a_shift_of_teacher_scores_and_validates():
    q, p, n = _leaf(3, 4, seed=14), _leaf(3, 4, seed=15), _leaf(3, 2, 4, seed=16)
    t = torch.randn(3, 3, generator=torch.Generator().manual_seed(17), dtype=torch.float64)
    a, b = MarginMSELoss()(q, p, n, t), MarginMSELoss()(q, p, n, t + 5.0)
    assert torch.allclose(a, b, atol=1e-10) and a.item() > 0
    with pytest.raises(ValueError, match="teacher_scores"):
        MarginMSELoss()(q, p, n, t[:, :2])


# ----------------------------------------------------------------------------- embedding MSE
def test_embedding_mse_same_dim_matches_numpy():
    s, t = _leaf(4, 6, seed=20), torch.randn(4, 6, generator=torch.Generator().manual_seed(21), dtype=torch.float64)
    loss_fn = EmbeddingMSELoss(6, 6)
    assert loss_fn.projection is None
    loss = loss_fn(s, t)
    want = float(np.mean((s.detach().numpy() - t.numpy()) ** 2))
    assert abs(loss.item() - want) < 1e-12
    (g,) = torch.autograd.grad(loss, (s,))
    assert torch.allclose(g, 2 * (s - t).detach() / s.numel(), atol=1e-12)


def test_embedding_mse_projection_matches_loop_and_trains():
    torch.manual_seed(0)
    s, t = _leaf(5, 4, seed=22), torch.randn(5, 7, generator=torch.Generator().manual_seed(23), dtype=torch.float64)
    loss_fn = EmbeddingMSELoss(4, 7).double()
    w, b = loss_fn.projection.weight, loss_fn.projection.bias
    loss = loss_fn(s, t)
    ref = sum(((sum(w[o, i] * s[r, i] for i in range(4)) + b[o]) - t[r, o]) ** 2
              for r in range(5) for o in range(7)) / 35
    assert torch.allclose(loss, ref, atol=1e-10)
    _assert_grads_match(loss, ref, (s, w, b))
    # The projection is a parameter of the loss: optimising it alone drives the loss down.
    opt = torch.optim.SGD(loss_fn.parameters(), lr=0.1)
    start = loss.item()
    for _ in range(50):
        opt.zero_grad()
        loss_fn(s.detach(), t).backward()
        opt.step()
    assert loss_fn(s.detach(), t).item() < 0.5 * start
    with pytest.raises(ValueError, match="projection"):
        EmbeddingMSELoss(4, 7, project=False)


# ----------------------------------------------------------------------------- hidden states (TinyBERT)
def test_uniform_layer_map():
    assert uniform_layer_map(3, 6) == {0: 0, 1: 2, 2: 4, 3: 6}
    assert uniform_layer_map(6, 12) == {0: 0, 1: 2, 2: 4, 3: 6, 4: 8, 5: 10, 6: 12}
    with pytest.raises(ValueError):
        uniform_layer_map(4, 6)


def reference_hidden(sh, th, layer_map, mask, proj_e=None, proj_h=None):
    """Loop over mapped layers, sequences and real tokens; squared error per feature."""
    per_layer = []
    for m, t in layer_map.items():
        total, count = 0.0, 0
        for b in range(mask.shape[0]):
            for tok in range(mask.shape[1]):
                if not mask[b, tok]:
                    continue
                x = sh[m][b, tok]
                proj = proj_e if m == 0 else proj_h
                if proj is not None:
                    x = proj.weight @ x + proj.bias
                total = total + ((x - th[t][b, tok]) ** 2).sum()
                count += th[t].shape[-1]
        per_layer.append(total / count)
    return sum(per_layer) / len(per_layer)


@pytest.mark.parametrize("ds,dt", [(6, 6), (4, 6)])
def test_hidden_state_loss_matches_reference(ds, dt):
    student = [_leaf(2, 5, ds, seed=30 + i) for i in range(4)]          # embeddings + 3 layers
    teacher = [torch.randn(2, 5, dt, generator=torch.Generator().manual_seed(40 + i), dtype=torch.float64)
               for i in range(7)]                                          # embeddings + 6 layers
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    lmap = uniform_layer_map(3, 6)
    loss_fn = HiddenStateDistillLoss(lmap, ds, dt).double()
    loss = loss_fn(student, teacher, mask)
    ref = reference_hidden(student, teacher, lmap, mask, loss_fn.embedding_projection, loss_fn.hidden_projection)
    assert torch.allclose(loss, ref, atol=1e-10)
    inputs = tuple(student) + tuple(loss_fn.parameters())
    _assert_grads_match(loss, ref, inputs)
    # Padding tokens get no gradient.
    assert torch.all(torch.autograd.grad(loss_fn(student, teacher, mask), student[1])[0][0, 3:] == 0)


def test_hidden_state_loss_validates_shapes():
    loss_fn = HiddenStateDistillLoss({0: 0, 1: 2}, 4, 4)
    with pytest.raises(ValueError, match="hidden states"):
        loss_fn([torch.zeros(1, 3, 4)], [torch.zeros(1, 3, 4)] * 3)
    with pytest.raises(ValueError, match="same tokenizer"):
        loss_fn([torch.zeros(1, 3, 4)] * 2, [torch.zeros(1, 4, 4)] * 3)


# ----------------------------------------------------------------------------- attention (MiniLM)
def _softmax_rows(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _attention_probs(seed, b, h, length, mask):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, h, length, length, generator=g, dtype=torch.float64)
    logits = logits.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
    return torch.softmax(logits, -1)


def reference_minilm(ta, sa, tv, sv, mask):
    """numpy: per sequence, head and real query token, KL over real keys of attention and value relations."""
    ta, sa, tv, sv = (x.detach().numpy() for x in (ta, sa, tv, sv))
    at, vr, rows = 0.0, 0.0, 0
    for b in range(mask.shape[0]):
        keys = np.nonzero(mask[b].numpy())[0]
        for h in range(ta.shape[1]):
            rt_all = _softmax_rows(tv[b, h][keys] @ tv[b, h][keys].T / math.sqrt(tv.shape[-1]))
            rs_all = _softmax_rows(sv[b, h][keys] @ sv[b, h][keys].T / math.sqrt(sv.shape[-1]))
            for qi, t in enumerate(keys):
                pt, ps = ta[b, h, t, keys], sa[b, h, t, keys]
                at += float((pt * (np.log(pt) - np.log(ps))).sum())
                vr += float((rt_all[qi] * (np.log(rt_all[qi]) - np.log(rs_all[qi]))).sum())
                rows += 1
    return at / rows, vr / rows


def reference_minilm_torch(ta, sa, tv, sv, mask):
    """The same computation with torch loops, for gradients."""
    at, vr, rows = 0.0, 0.0, 0
    for b in range(mask.shape[0]):
        keys = [k for k in range(mask.shape[1]) if mask[b, k]]
        for h in range(ta.shape[1]):
            vt, vs = tv[b, h][keys], sv[b, h][keys]
            lt = torch.log_softmax(vt @ vt.T / math.sqrt(tv.shape[-1]), -1)
            ls = torch.log_softmax(vs @ vs.T / math.sqrt(sv.shape[-1]), -1)
            for qi, t in enumerate(keys):
                pt, ps = ta[b, h, t, keys], sa[b, h, t, keys]
                at = at + (pt * (torch.log(pt) - torch.log(ps))).sum()
                vr = vr + (lt[qi].exp() * (lt[qi] - ls[qi])).sum()
                rows += 1
    return at / rows + vr / rows


def test_attention_distill_matches_numpy_and_loop_reference():
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    ta = _attention_probs(50, 2, 3, 6, mask)
    s_logits = _leaf(2, 3, 6, 6, seed=51)
    sa = torch.softmax(s_logits.masked_fill(~mask.bool()[:, None, None, :], float("-inf")), -1)
    tv = torch.randn(2, 3, 6, 8, generator=torch.Generator().manual_seed(52), dtype=torch.float64)
    sv = _leaf(2, 3, 6, 4, seed=53)                                      # smaller head size than the teacher
    at_ref, vr_ref = reference_minilm(ta, sa, tv, sv, mask)
    only_at = AttentionDistillLoss(value_relation=False)(sa, ta, attention_mask=mask)
    assert abs(only_at.item() - at_ref) < 1e-9
    loss = AttentionDistillLoss()(sa, ta, sv, tv, mask)
    assert abs(loss.item() - (at_ref + vr_ref)) < 1e-9
    _assert_grads_match(loss, reference_minilm_torch(ta, sa, tv, sv, mask), (s_logits, sv))
    # Padding query rows and padding keys contribute nothing: changing them leaves the loss unchanged.
    sv2 = sv.detach().clone()
    sv2[0, :, 4:] = 100.0
    assert torch.allclose(AttentionDistillLoss()(sa, ta, sv2, tv, mask), loss, atol=1e-10)


def test_attention_distill_zero_for_identical_and_validates():
    mask = torch.ones(1, 4, dtype=torch.long)
    a = _attention_probs(60, 1, 2, 4, mask)
    v = torch.randn(1, 2, 4, 3, generator=torch.Generator().manual_seed(61), dtype=torch.float64)
    assert AttentionDistillLoss()(a, a, v, v, mask).abs().item() < 1e-12
    with pytest.raises(ValueError, match="values"):
        AttentionDistillLoss()(a, a)
    with pytest.raises(ValueError, match="shapes differ"):
        AttentionDistillLoss(value_relation=False)(a, a[:, :1])


def test_last_layer_attention_extracts_probabilities_and_values_from_the_shipped_model():
    from fastemb.model.encoder import Encoder

    enc = Encoder.load("all-MiniLM-L6-v2").train()
    tok = enc.tokenize(["a large feline", "dog, domestic dog, Canis familiaris"])
    hidden, attn, values = last_layer_attention(enc.transformer, tok["input_ids"], tok["attention_mask"])
    heads = enc.transformer.config.num_attention_heads
    length = tok["input_ids"].shape[1]
    assert attn.shape == (2, heads, length, length) and values.shape == (2, heads, length, enc.dim // heads)
    assert torch.allclose(attn.sum(-1), torch.ones(2, heads, length), atol=1e-5)   # no dropout on the rows
    assert torch.all(attn[0, :, :, tok["attention_mask"][0] == 0] == 0)             # padding keys
    assert enc.transformer.encoder.layer[-1].attention.self.dropout.p > 0           # dropout restored
    assert hidden.shape == (2, length, enc.dim)
