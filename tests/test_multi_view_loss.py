"""The multi-view InfoNCE loss against a plain loop reference: values, gradients, missing views, per-view weights,
false-negative masking, and the two terms' weights."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fastemb.losses import MultiViewInfoNCELoss


def _leaves(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)


def reference(q, v, m, w, tau=0.05, wq=1.0, wv=1.0, cosine=True, same=None):
    """Loop reference: for each anchor, a softmax over the candidates present; ``same[i][j]``: j is a false negative
    of i (masked)."""
    sim = (lambda a, b: F.cosine_similarity(a, b, dim=0)) if cosine else (lambda a, b: a @ b)
    B, V = len(m), len(m[0])

    def nce(anchor, i, b):
        logits, pos = [], None
        for j in range(B):
            if not m[j][b] or (j != i and same is not None and same[i][j]):
                continue
            if j == i:
                pos = len(logits)
            logits.append(sim(anchor, v[j, b]) / tau)
        return -torch.log_softmax(torch.stack(logits), 0)[pos]

    num, den = 0.0, 0.0
    for i in range(B):
        for a in range(V):
            if m[i][a]:
                num, den = num + w[a] * nce(q[i], i, a), den + w[a]
    loss = wq * num / den
    num, den = 0.0, 0.0
    for i in range(B):
        for a in range(V):
            for b in range(V):
                if a != b and m[i][a] and m[i][b]:
                    num, den = num + w[a] * w[b] * nce(v[i, a], i, b), den + w[a] * w[b]
    return loss + (wv * num / den if den else 0.0)


MASK = [[1, 1, 1], [1, 0, 1], [0, 1, 0], [1, 1, 1], [1, 1, 0]]   # row 2 has a single view, others miss some


@pytest.mark.parametrize("cosine", [True, False])
def test_matches_loop_reference_values_and_gradients(cosine):
    q, v = _leaves(5, 8, seed=1), _leaves(5, 3, 8, seed=2)
    m = torch.tensor(MASK, dtype=torch.bool)
    w = [1.0, 0.5, 2.0]
    loss, terms = MultiViewInfoNCELoss(w, 0.1, 1.0, 0.7, "cosine" if cosine else "dot",
                                       gather_across_workers=False)(q, v * m.unsqueeze(-1), m)
    ref = reference(q, v, MASK, w, 0.1, 1.0, 0.7, cosine)
    assert torch.allclose(loss, ref, atol=1e-10)
    assert set(terms) == {"query", "view", "query_0", "query_1", "query_2"}
    for a, b in zip(torch.autograd.grad(loss, (q, v)), torch.autograd.grad(ref, (q, v))):
        assert torch.isfinite(a).all() and torch.allclose(a, b, atol=1e-10)


def test_view_weights_change_the_loss_and_zero_weight_ignores_a_view():
    q, v = _leaves(4, 8, seed=3), _leaves(4, 3, 8, seed=4)
    m = torch.ones(4, 3, dtype=torch.bool)
    a, _ = MultiViewInfoNCELoss([1, 1, 1], gather_across_workers=False)(q, v, m)
    b, _ = MultiViewInfoNCELoss([1, 1, 5], gather_across_workers=False)(q, v, m)
    assert not torch.allclose(a, b)
    c, _ = MultiViewInfoNCELoss([1, 1, 0], gather_across_workers=False)(q, v, m)
    ref = reference(q, v[:, :2], [[1, 1]] * 4, [1, 1])
    assert torch.allclose(c, ref, atol=1e-10)
    (g,) = torch.autograd.grad(c, v)
    assert torch.all(g[:, 2] == 0)                      # the unweighted view gets no gradient


def test_query_term_alone_and_single_view_batch_and_false_negatives():
    q, v = _leaves(4, 8, seed=5), _leaves(4, 2, 8, seed=6)
    m = torch.tensor([[1, 0], [1, 0], [1, 0], [1, 0]], dtype=torch.bool)   # single-view items: no view<->view pair
    loss, terms = MultiViewInfoNCELoss([1, 1], view_weight=1.0, gather_across_workers=False)(q, v, m)
    assert terms["view"] == 0.0 and math.isfinite(loss.item()) and "query_1" not in terms
    assert torch.allclose(loss, reference(q, v, m.tolist(), [1, 1], wv=1.0), atol=1e-10)
    m = torch.ones(4, 2, dtype=torch.bool)
    item_ids, query_ids = torch.tensor([10, 11, 10, 12]), torch.tensor([1, 2, 3, 2])
    loss, terms = MultiViewInfoNCELoss([1, 1], view_weight=0.0, gather_across_workers=False)(
        q, v, m, query_ids=query_ids, item_ids=item_ids)
    same = [[False] * 4 for _ in range(4)]
    same[0][2] = same[2][0] = same[1][3] = same[3][1] = True
    assert "view" not in terms
    assert torch.allclose(loss, reference(q, v, m.tolist(), [1, 1], wv=0.0, same=same), atol=1e-10)


def test_bad_settings_are_refused():
    for kwargs in ({"view_weights": []}, {"view_weights": [0, 0]}, {"view_weights": [1, -1]},
                   {"view_weights": [1], "temperature": 0}, {"view_weights": [1], "query_weight": 0,
                                                             "view_weight": 0}):
        with pytest.raises(ValueError):
            MultiViewInfoNCELoss(**kwargs)


def _mv_worker(rank, world, port, q, v, mask, iid, out):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    b = q.shape[0] // world
    sl = slice(rank * b, (rank + 1) * b)
    lq, lv = q[sl].clone().requires_grad_(True), v[sl].clone().requires_grad_(True)
    loss, _ = MultiViewInfoNCELoss([1.0, 0.5, 2.0], 0.05, 1.0, 0.5)(lq, lv, mask[sl], item_ids=iid[sl])
    loss.backward()
    out[rank] = (loss.detach(), lq.grad, lv.grad)
    dist.destroy_process_group()


def test_gathered_on_two_processes_equals_single_process():
    """Each rank's queries against every rank's items (views gathered with their gradient). Each rank averages over
    its own present views, so the ranks here hold the same view weights in total (one missing third view each): then
    the mean over ranks is the single-process loss, and the averaged gradients its gradients."""
    import socket

    import torch.multiprocessing as mp

    q, v = _leaves(6, 6, seed=30).detach(), _leaves(6, 3, 6, seed=31).detach()
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    v = v * mask.unsqueeze(-1)
    iid = torch.tensor([1, 2, 3, 1, 5, 6])  # rows 0 and 3: the same item on two ranks
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_mv_worker, args=(2, port, q, v, mask, iid, out), nprocs=2, join=True)
        results = [out[0], out[1]]
    sq, sv = q.clone().requires_grad_(True), v.clone().requires_grad_(True)
    single, _ = MultiViewInfoNCELoss([1.0, 0.5, 2.0], 0.05, 1.0, 0.5, gather_across_workers=False)(
        sq, sv, mask, item_ids=iid)
    single.backward()
    assert torch.allclose((results[0][0] + results[1][0]) / 2, single, atol=1e-10)
    for k, full in ((1, sq.grad), (2, sv.grad)):
        assert torch.allclose(torch.cat([results[0][k], results[1][k]]) / 2, full, atol=1e-10)
