"""The dynamic negative pool (fastemb/train/negative_pool.py), in-process on real WordNet pairs and MiniLM:
a refresh replaces random negatives by harder ones, follows the mining rules, and its table survives a checkpoint."""
from __future__ import annotations

import random

import numpy as np
import pytest

from fastemb.data.pairs import DataError, load_pairs
from fastemb.mine.topk import normalize_rows
from fastemb.model.encoder import Encoder
from fastemb.spec import NegativePoolSpec
from fastemb.train.negative_pool import NegativePool, describe_refresh

K = 2


@pytest.fixture(scope="module")
def pairs() -> list[dict]:
    """160 WordNet pairs with K random (stale) negatives from other positives; one query has two positives."""
    rows, _ = load_pairs("wordnet", 160, 0, 5)
    rows.append({"query": rows[0]["query"], "positive": rows[1]["positive"]})
    rng = random.Random(5)
    positives = [p["positive"] for p in rows]
    return [{**p, "negatives": [t for t in rng.sample(positives, 6) if t != p["positive"]][:K]} for p in rows]


@pytest.fixture(scope="module")
def encoder(minilm_path) -> Encoder:
    return Encoder.load(minilm_path, max_length=32)


def _cfg(**kw) -> NegativePoolSpec:
    return NegativePoolSpec(refresh_every=1, top_k=30, query_chunk=16, **kw)


def test_refresh_picks_harder_negatives_by_the_mining_rules(pairs, encoder):
    pool = NegativePool("wordnet", pairs, K, _cfg())
    assert not pool.needs_mining
    stale = {q: pool.negatives_for(q) for q in pool.queries}
    stats = pool.refresh(encoder, step=7)

    # Independent scoring under the same model.
    queries, corpus = pool.queries, pool.corpus
    qv, cv = normalize_rows(encoder.encode(queries)), normalize_rows(encoder.encode(corpus))
    sims = qv @ cv.T
    positives = {q: {p["positive"] for p in pairs if p["query"] == q} for q in queries}
    stale_texts = list(dict.fromkeys(t for q in queries for t in stale[q]))
    sv = dict(zip(stale_texts, normalize_rows(encoder.encode(stale_texts))))
    new_scores, old_scores = [], []
    for i, q in enumerate(queries):
        new = pool.negatives_for(q)
        assert len(new) == K and not set(new) & positives[q]
        s_pos = min(float(sims[i, corpus.index(t)]) for t in positives[q])
        order = np.argsort(-sims[i], kind="stable")[:30]
        want = [corpus[j] for j in order if corpus[j] not in positives[q] and sims[i, j] <= 0.95 * s_pos][:K]
        if len(want) == K:                       # otherwise topped up at random (counted as short)
            assert new == want
        new_scores += [float(sims[i, corpus.index(t)]) for t in new]
        old_scores += [float(qv[i] @ sv[t]) for t in stale[q]]
    assert np.mean(new_scores) > np.mean(old_scores) + 0.15, (np.mean(new_scores), np.mean(old_scores))
    assert stats["changed"] > 0.9 * stats["negatives"] and stats["negatives"] == K * len(queries)
    assert stats["new_score_mean"] == pytest.approx(np.mean(new_scores), abs=1e-4)
    assert stats["old_score_mean"] == pytest.approx(np.mean(old_scores), abs=1e-4)
    assert stats["new_rank_mean"] < stats["old_rank_mean"] and stats["step"] == 7
    assert stats["skipped"]["positive"] > 0.8 * len(queries) and "changed" in describe_refresh(stats)

    again = pool.refresh(encoder, step=8)        # same model: only the random top-ups of short queries change
    assert again["changed"] <= K * again["short"] < 0.3 * again["negatives"]


def test_pairs_without_negatives_are_mined_first_and_the_table_survives_a_checkpoint(pairs, encoder):
    rows = [dict(p) for p in pairs]
    rows[3]["negatives"] = []
    pool = NegativePool("wordnet", rows, K, _cfg(pool_size=100))
    assert pool.needs_mining and pool.negatives_for(rows[3]["query"]) is None and len(pool.corpus) == 100
    stats = pool.refresh(encoder, step=0)
    assert not pool.needs_mining and len(pool.negatives_for(rows[3]["query"])) == K
    assert all(t in pool.corpus for q in pool.queries for t in pool.negatives_for(q))
    batch = pool.apply(rows[:4])
    assert [r["negatives"] for r in batch] == [pool.negatives_for(r["query"]) for r in rows[:4]]
    assert stats["queries"] == len(pool.queries) and stats["pool"] == 100

    shuffled = list(reversed(rows))              # a restarted worker reads the rows in another order
    restored = NegativePool("wordnet", shuffled, K, _cfg(pool_size=100))
    restored.load_state_dict(pool.state_dict())
    assert all(restored.negatives_for(q) == pool.negatives_for(q) for q in pool.queries)
    assert restored.refreshed_at == 0
    with pytest.raises(DataError, match="negatives_pool"):
        NegativePool("wordnet", rows[:-5], K, _cfg(pool_size=100)).load_state_dict(pool.state_dict())
    with pytest.raises(DataError, match="negatives_pool.pool_size"):
        NegativePool("wordnet", rows, K, _cfg(pool_size=3))
