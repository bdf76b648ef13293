"""InfoNCE against a plain reference computation: values, gradients, masking, and 2-process gathering."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from fastemb.losses import InfoNCELoss


def reference_infonce(q, p, n=None, tau=0.05, cosine=True, mask=None, weights=None):
    """Loop-based InfoNCE: for each query, softmax over every positive and every negative; ``weights``: each query's
    term times its weight, then the mean."""
    docs = [p[j] for j in range(len(p))]
    if n is not None:
        docs += [n[i, j] for i in range(n.shape[0]) for j in range(n.shape[1])]
    losses = []
    for i in range(len(q)):
        scores = []
        for j, d in enumerate(docs):
            s = F.cosine_similarity(q[i], d, dim=0) if cosine else q[i] @ d
            if mask is not None and mask[i][j]:
                continue
            scores.append((j, s / tau))
        logits = torch.stack([s for _, s in scores])
        target = [k for k, (j, _) in enumerate(scores) if j == i][0]
        losses.append(-torch.log_softmax(logits, 0)[target] * (1.0 if weights is None else weights[i]))
    return torch.stack(losses).mean()


def _leaves(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)


@pytest.mark.parametrize("cosine", [True, False])
def test_in_batch_matches_reference_values_and_gradients(cosine):
    q, p = _leaves(6, 8, seed=1), _leaves(6, 8, seed=2)
    loss = InfoNCELoss(0.1, "cosine" if cosine else "dot", gather_across_workers=False)(q, p)
    ref = reference_infonce(q, p, tau=0.1, cosine=cosine)
    assert torch.allclose(loss, ref, atol=1e-10)
    g1 = torch.autograd.grad(loss, (q, p))
    g2 = torch.autograd.grad(ref, (q, p))
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-10)


def test_hard_negatives_match_reference():
    q, p, n = _leaves(4, 8, seed=3), _leaves(4, 8, seed=4), _leaves(4, 3, 8, seed=5)
    loss = InfoNCELoss(0.05, gather_across_workers=False)(q, p, n)
    ref = reference_infonce(q, p, n, tau=0.05)
    assert torch.allclose(loss, ref, atol=1e-10)
    for a, b in zip(torch.autograd.grad(loss, (q, p, n)), torch.autograd.grad(ref, (q, p, n))):
        assert torch.allclose(a, b, atol=1e-10)


def test_temperature_changes_loss_and_must_be_positive():
    q, p = _leaves(4, 8, seed=6), _leaves(4, 8, seed=7)
    a = InfoNCELoss(0.05, gather_across_workers=False)(q, p)
    b = InfoNCELoss(1.0, gather_across_workers=False)(q, p)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(0.0)


def test_duplicate_texts_are_masked_as_false_negatives():
    q, p = _leaves(4, 8, seed=8), _leaves(4, 8, seed=9)
    doc_ids = torch.tensor([10, 11, 10, 12])      # rows 0 and 2 share a positive text
    query_ids = torch.tensor([1, 2, 3, 2])         # rows 1 and 3 share a query text
    loss = InfoNCELoss(0.05, gather_across_workers=False)(q, p, query_ids=query_ids, doc_ids=doc_ids)
    mask = [[False] * 4 for _ in range(4)]
    mask[0][2] = mask[2][0] = True                 # same positive text
    mask[1][3] = mask[3][1] = True                 # positive of another copy of my query
    ref = reference_infonce(q, p, tau=0.05, mask=mask)
    assert torch.allclose(loss, ref, atol=1e-10)
    unmasked = InfoNCELoss(0.05, gather_across_workers=False, mask_false_negatives=False)(
        q, p, query_ids=query_ids, doc_ids=doc_ids)
    assert not torch.allclose(loss, unmasked)


@pytest.mark.parametrize("block", [1, 3, 7])
def test_scoring_query_rows_in_blocks_gives_the_same_loss_and_gradients(block):
    """block_rows: the score matrix a block of rows at a time (checkpointed); masking and hard negatives included."""
    q, p, n = _leaves(8, 6, seed=13), _leaves(8, 6, seed=14), _leaves(8, 2, 6, seed=15)
    ids = {"query_ids": torch.tensor([1, 2, 3, 4, 5, 6, 1, 8]), "doc_ids": torch.tensor([20, 21, 22, 23, 21, 25, 26, 27]),
           "negative_ids": torch.tensor([[20, 40], [41, 42], [43, 44], [45, 46], [47, 48], [49, 50], [51, 52], [53, 54]])}
    whole = InfoNCELoss(0.05, gather_across_workers=False)(q, p, n, **ids)
    blocked = InfoNCELoss(0.05, gather_across_workers=False, block_rows=block)(q, p, n, **ids)
    assert torch.allclose(whole, blocked, atol=1e-10)
    for a, b in zip(torch.autograd.grad(whole, (q, p, n)), torch.autograd.grad(blocked, (q, p, n))):
        assert torch.allclose(a, b, atol=1e-10)
    with pytest.raises(ValueError, match="block_rows"):
        InfoNCELoss(0.05, block_rows=0)


@pytest.mark.parametrize("block", [None, 3])
def test_weighted_pairs_match_the_reference_whole_and_in_blocks(block):
    """Per-pair weights (click weights): each query's term times its weight, values and gradients; all-ones weights
    are the unweighted loss, and a zero weight removes that query's term."""
    q, p, n = _leaves(6, 8, seed=16), _leaves(6, 8, seed=17), _leaves(6, 2, 8, seed=18)
    w = torch.tensor([0.5, 2.0, 1.0, 0.0, 1.5, 1.0], dtype=torch.float64)
    loss = InfoNCELoss(0.05, gather_across_workers=False, block_rows=block)(q, p, n, weights=w)
    ref = reference_infonce(q, p, n, tau=0.05, weights=w)
    assert torch.allclose(loss, ref, atol=1e-10)
    for a, b in zip(torch.autograd.grad(loss, (q, p, n)), torch.autograd.grad(ref, (q, p, n))):
        assert torch.allclose(a, b, atol=1e-10)
    ones = InfoNCELoss(0.05, gather_across_workers=False, block_rows=block)(q, p, n, weights=torch.ones(6))
    assert torch.allclose(ones, InfoNCELoss(0.05, gather_across_workers=False)(q, p, n), atol=1e-10)
    assert not torch.allclose(loss, ones)
    g_q = torch.autograd.grad(InfoNCELoss(0.05, gather_across_workers=False)(q, p, n, weights=w), q)[0]
    assert torch.count_nonzero(g_q[3]) == 0  # weight 0: query 3 gets no gradient of its own term


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, q, p, n, qid, did, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    b = q.shape[0] // world
    sl = slice(rank * b, (rank + 1) * b)
    lq, lp, ln = (t[sl].clone().requires_grad_(True) for t in (q, p, n))
    loss = InfoNCELoss(0.05)(lq, lp, ln, query_ids=qid[sl], doc_ids=did[sl],
                             negative_ids=torch.arange(1000, 1000 + n.shape[0] * n.shape[1]).view(n.shape[:2])[sl])
    loss.backward()
    out[rank] = (loss.detach(), lq.grad, lp.grad, ln.grad)
    dist.destroy_process_group()


def test_gathered_loss_on_two_processes_equals_single_process_on_concatenated_batch():
    q, p, n = (t.detach() for t in (_leaves(8, 6, seed=10), _leaves(8, 6, seed=11), _leaves(8, 2, 6, seed=12)))
    qid, did = torch.tensor([1, 2, 3, 4, 5, 6, 1, 8]), torch.tensor([20, 21, 22, 23, 21, 25, 26, 27])
    nid = torch.arange(1000, 1016).view(8, 2)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), q, p, n, qid, did, out), nprocs=2, join=True)
        results = [out[0], out[1]]
    # Single process on the concatenated batch, candidates in the same order as the gathered ones.
    sq, sp, sn = (t.clone().requires_grad_(True) for t in (q, p, n))
    single = InfoNCELoss(0.05, gather_across_workers=False)(sq, sp, sn, query_ids=qid, doc_ids=did, negative_ids=nid)
    single.backward()
    mean_loss = (results[0][0] + results[1][0]) / 2        # what data-parallel averaging reports
    assert torch.allclose(mean_loss, single, atol=1e-10)
    # Data-parallel training averages gradients over ranks: grad_rank / world == single-process grad.
    for k, full in ((1, sq.grad), (2, sp.grad), (3, sn.grad)):
        got = torch.cat([results[0][k], results[1][k]]) / 2
        assert torch.allclose(got, full, atol=1e-10)


# ------------------------------------------------------------------ hierarchical InfoNCE (long documents)
def reference_hierarchical(q, chunks, counts, tau=0.05, wc=1.0, wd=1.0, positive="max", cosine=True, same=None):
    """Loop-based hierarchical InfoNCE: per query, a chunk-level softmax (own document's best or attention-pooled
    chunk against every chunk of the other documents) and a document-level one (mean chunk vectors).
    ``same[i][j]``: document j is a false negative of query i (skipped as a candidate)."""
    def sim(a, b):
        return F.cosine_similarity(a, b, dim=0) if cosine else a @ b

    def unit(v):
        return v / v.norm() if cosine else v

    chunk_losses, doc_losses = [], []
    for i in range(len(q)):
        own = [sim(q[i], chunks[i, m]) / tau for m in range(counts[i])]
        if positive == "max":
            pos = max(own)
        else:
            weights = torch.softmax(torch.stack(own), 0)
            pos = sum(w * s for w, s in zip(weights, own))
        logits = [pos]
        for j in range(len(q)):
            if j != i and not (same and same[i][j]):
                logits += [sim(q[i], chunks[j, m]) / tau for m in range(counts[j])]
        chunk_losses.append(torch.logsumexp(torch.stack(logits), 0) - pos)
        docs = [unit(sum(unit(chunks[j, m]) for m in range(counts[j])) / counts[j]) for j in range(len(q))]
        doc_logits = [q[i] @ docs[j] / (q[i].norm() if cosine else 1) / tau
                      for j in range(len(q)) if j == i or not (same and same[i][j])]
        target = sum(1 for j in range(i) if not (same and same[i][j]))
        doc_losses.append(-torch.log_softmax(torch.stack(doc_logits), 0)[target])
    loss = wc * torch.stack(chunk_losses).mean() + wd * torch.stack(doc_losses).mean()
    return loss


@pytest.mark.parametrize("positive,cosine,wc,wd", [("max", True, 1.0, 1.0), ("attention", True, 0.7, 0.3),
                                                   ("max", False, 1.0, 0.0), ("attention", True, 0.0, 1.0)])
def test_hierarchical_matches_loop_reference_values_and_gradients(positive, cosine, wc, wd):
    from fastemb.losses import HierarchicalInfoNCELoss

    counts = [3, 1, 2, 3, 2]
    q, c = _leaves(5, 6, seed=20), _leaves(5, 3, 6, seed=21)
    mask = torch.tensor([[m < n for m in range(3)] for n in counts])
    loss, terms = HierarchicalInfoNCELoss(0.1, wc, wd, positive, "cosine" if cosine else "dot",
                                          gather_across_workers=False)(q, c, mask)
    ref = reference_hierarchical(q, c, counts, 0.1, wc, wd, positive, cosine)
    assert torch.allclose(loss, ref, atol=1e-10)
    assert set(terms) == {name for name, w in (("chunk", wc), ("doc", wd)) if w}
    g1, g2 = torch.autograd.grad(loss, (q, c)), torch.autograd.grad(ref, (q, c))
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-10)
    assert torch.all(g1[1][~mask] == 0)                  # padded chunks get no gradient


def test_hierarchical_masks_duplicate_documents_and_queries():
    from fastemb.losses import HierarchicalInfoNCELoss

    counts = [2, 2, 1, 2]
    q, c = _leaves(4, 6, seed=22), _leaves(4, 2, 6, seed=23)
    mask = torch.tensor([[m < n for m in range(2)] for n in counts])
    doc_ids, query_ids = torch.tensor([10, 11, 10, 12]), torch.tensor([1, 2, 3, 2])
    loss, _ = HierarchicalInfoNCELoss(0.05, 1.0, 0.5, "attention", gather_across_workers=False)(
        q, c, mask, query_ids=query_ids, doc_ids=doc_ids)
    same = [[False] * 4 for _ in range(4)]
    same[0][2] = same[2][0] = same[1][3] = same[3][1] = True
    ref = reference_hierarchical(q, c, counts, 0.05, 1.0, 0.5, "attention", same=same)
    assert torch.allclose(loss, ref, atol=1e-10)
    for a, b in zip(torch.autograd.grad(loss, (q, c)), torch.autograd.grad(ref, (q, c))):
        assert torch.allclose(a, b, atol=1e-10)
    unmasked, _ = HierarchicalInfoNCELoss(0.05, 1.0, 0.5, "attention", gather_across_workers=False,
                                          mask_false_negatives=False)(q, c, mask, query_ids, doc_ids)
    assert not torch.allclose(loss, unmasked)


def test_hierarchical_rejects_bad_settings():
    from fastemb.losses import HierarchicalInfoNCELoss

    with pytest.raises(ValueError, match="weights"):
        HierarchicalInfoNCELoss(chunk_weight=0.0, doc_weight=0.0)
    with pytest.raises(ValueError, match="positive"):
        HierarchicalInfoNCELoss(positive="mean")
    with pytest.raises(ValueError, match="temperature"):
        HierarchicalInfoNCELoss(temperature=0)


def _hier_worker(rank, world, port, q, c, mask, did, out):
    from fastemb.losses import HierarchicalInfoNCELoss

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    b = q.shape[0] // world
    sl = slice(rank * b, (rank + 1) * b)
    lq, lc = q[sl].clone().requires_grad_(True), c[sl].clone().requires_grad_(True)
    loss, _ = HierarchicalInfoNCELoss(0.05, 1.0, 0.5, "attention")(lq, lc, mask[sl], doc_ids=did[sl])
    loss.backward()
    out[rank] = (loss.detach(), lq.grad, lc.grad)
    dist.destroy_process_group()


def test_hierarchical_gathered_on_two_processes_equals_single_process():
    from fastemb.losses import HierarchicalInfoNCELoss

    q, c = _leaves(6, 6, seed=24).detach(), _leaves(6, 3, 6, seed=25).detach()
    mask = torch.tensor([[m < n for m in range(3)] for n in [3, 1, 2, 2, 3, 1]])
    did = torch.tensor([1, 2, 3, 1, 5, 6])  # rows 0 and 3: the same document on two ranks
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_hier_worker, args=(2, _free_port(), q, c, mask, did, out), nprocs=2, join=True)
        results = [out[0], out[1]]
    sq, sc = q.clone().requires_grad_(True), c.clone().requires_grad_(True)
    single, _ = HierarchicalInfoNCELoss(0.05, 1.0, 0.5, "attention", gather_across_workers=False)(
        sq, sc, mask, doc_ids=did)
    single.backward()
    assert torch.allclose((results[0][0] + results[1][0]) / 2, single, atol=1e-10)
    for k, full in ((1, sq.grad), (2, sc.grad)):
        assert torch.allclose(torch.cat([results[0][k], results[1][k]]) / 2, full, atol=1e-10)
