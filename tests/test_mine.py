"""Hard-negative mining: selection rules, chunked search, and the Ray job on a slice of the shipped WordNet data."""
from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest

from fastemb.data.pairs import load_pairs
from fastemb.mine.job import mine, model_dicts, write_pairs
from fastemb.mine.topk import chunked_topk, exact_index, normalize_rows
from fastemb.mine.select import NegativeRules, select_negatives
from fastemb.spec import SpecError, parse_spec


def _select(scores, hashes, pos, query, pos_score, rules, seed=0):
    skipped = Counter()
    rows = np.arange(len(scores))
    picked = select_negatives(rows, np.array(scores), np.array(hashes), set(pos), query, pos_score, rules, skipped,
                              random.Random(seed))
    return picked, skipped


def test_every_skip_reason_is_counted():
    #        rank: 0     1     2     3     4     5     6     7
    scores = [0.99, 0.97, 0.90, 0.85, 0.80, 0.80, 0.70, 0.60]
    hashes = [11,   12,   13,   14,   15,   14,   16,   17]     # 11 positive, 12 the query, 14 repeated at rank 5
    rules = NegativeRules(num_negatives=2, range_min=0, range_max=7, relative_margin=0.05)
    picked, skipped = _select(scores, hashes, {11}, 12, 0.95, rules)
    # limit = 0.95 * 0.95 = 0.9025 → rank 2 (0.90) is allowed; rank 7 is outside the window.
    assert picked == [2, 3]
    assert skipped == Counter({"positive": 1, "same as query": 1, "duplicate text": 1, "outside rank window": 1,
                               "not sampled": 2})
    assert sum(skipped.values()) + len(picked) == len(scores)


def test_margins_drop_candidates_too_close_to_the_positive():
    scores, hashes = [0.9, 0.8, 0.7, 0.5], [1, 2, 3, 4]
    picked, skipped = _select(scores, hashes, set(), 99, 0.86, NegativeRules(4, relative_margin=0.05))
    assert picked == [1, 2, 3] and skipped["likely false negative"] == 1          # limit 0.817: 0.9 dropped
    picked, skipped = _select(scores, hashes, set(), 99, 0.86, NegativeRules(4, relative_margin=0.1))
    assert picked == [2, 3] and skipped["likely false negative"] == 2             # limit 0.774
    picked, skipped = _select(scores, hashes, set(), 99, 0.86, NegativeRules(4, relative_margin=None,
                                                                             absolute_margin=0.2))
    assert picked == [3] and skipped["likely false negative"] == 3                # limit 0.66
    picked, _ = _select(scores, hashes, set(), 99, 0.86, NegativeRules(4, relative_margin=None))
    assert picked == [0, 1, 2, 3]


def test_random_sampling_stays_in_the_window_and_is_seeded():
    scores = list(np.linspace(0.5, 0.1, 30))
    rules = NegativeRules(5, range_min=10, range_max=25, relative_margin=None, sampling="random")
    a, skipped = _select(scores, list(range(30)), set(), -1, 1.0, rules, seed=1)
    b, _ = _select(scores, list(range(30)), set(), -1, 1.0, rules, seed=1)
    c, _ = _select(scores, list(range(30)), set(), -1, 1.0, rules, seed=2)
    assert a == b != c and len(a) == 5 and all(10 <= r < 25 for r in a)
    assert skipped == Counter({"outside rank window": 15, "not sampled": 10})
    with pytest.raises(ValueError, match="window"):
        NegativeRules(3, range_min=5, range_max=5)


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunked_topk_equals_brute_force(chunk):
    rng = np.random.default_rng(0)
    corpus, queries = normalize_rows(rng.normal(size=(200, 16))), normalize_rows(rng.normal(size=(23, 16)))
    got_rows, got_scores = [], []
    for start, scores, rows in chunked_topk(exact_index(corpus), queries, 10, chunk):
        assert start == len(got_rows) and len(rows) <= chunk
        got_rows.extend(rows)
        got_scores.extend(scores)
    full = queries @ corpus.T
    for i in range(len(queries)):
        want = np.argsort(-full[i])[:10]
        assert list(got_rows[i]) == list(want)
        assert np.allclose(got_scores[i], full[i][want], atol=1e-5)


@pytest.fixture(scope="module")
def wordnet_slice():
    pairs, _ = load_pairs("wordnet", max_pairs=120, seed=3)
    # Two positives for one query: both must be kept out of its negatives.
    pairs.append({"query": pairs[0]["query"], "positive": pairs[1]["positive"]})
    return pairs


def test_mine_on_wordnet_slice_matches_an_independent_ranking(wordnet_slice, tmp_path):
    from fastemb.model.encoder import Encoder

    pairs = wordnet_slice
    enc = Encoder.load("all-MiniLM-L6-v2", max_length=64)
    queries = list(dict.fromkeys(p["query"] for p in pairs))
    corpus = list(dict.fromkeys(p["positive"] for p in pairs))
    qv, cv = normalize_rows(enc.encode(queries)), normalize_rows(enc.encode(corpus))
    rules = NegativeRules(num_negatives=4, relative_margin=0.05)
    rows, stats = mine(pairs, corpus, {"queries": qv, "positives": cv, "corpus": cv}, rules, top_k=30,
                       query_chunk=16, seed=0)
    assert len(rows) == len(pairs) and stats["corpus"] == len(corpus)
    positives_of = {}
    for p in pairs:
        positives_of.setdefault(p["query"], set()).add(p["positive"])
    for r in rows:
        qi = queries.index(r["query"])
        s_pos = min(float(qv[qi] @ cv[corpus.index(t)]) for t in positives_of[r["query"]])
        # Independent ranking: all corpus texts by score, drop positives and near-positives, take the top 4.
        order = np.argsort(-(cv @ qv[qi]), kind="stable")[:30]
        want = [corpus[j] for j in order if corpus[j] not in positives_of[r["query"]]
                and float(cv[j] @ qv[qi]) <= 0.95 * s_pos][:4]
        assert r["negatives"] == want
        assert not set(r["negatives"]) & positives_of[r["query"]]
        assert np.isclose(r["scores"][0], float(qv[qi] @ cv[corpus.index(r["positive"])]), atol=1e-5)
        assert all(s <= 0.95 * s_pos + 1e-6 for s in r["scores"][1:])
    in_top = {q: sum(corpus[j] in positives_of[q] for j in np.argsort(-(cv @ qv[i]))[:30])
              for i, q in enumerate(queries)}
    assert stats["skipped"]["positive"] == sum(in_top.values()) > 0.8 * len(queries)
    write_pairs(rows, tmp_path / "pairs.parquet", with_scores=True)
    loaded, report = load_pairs(str(tmp_path / "pairs.parquet"), hard_negatives=2)
    assert report.read == len(rows) and len(loaded) == sum(len(r["negatives"]) >= 2 for r in rows)


def test_mine_job_on_ray(ray_local, tmp_path):
    from fastemb.mine.job import run_mine
    from fastemb.spec import parse_spec

    spec = parse_spec({"job": "mine", "name": "m", "storage_path": str(tmp_path),
                       "data": {"train": "wordnet", "max_pairs": 150},
                       "mining": {"top_k": 20, "num_negatives": 3, "query_chunk": 32},
                       "embed": {"num_actors": 1, "batch_rows": 64}})
    report = run_mine(spec)
    table = pq.read_table(tmp_path / "m" / "pairs.parquet")
    assert table.column_names == ["query", "positive", "negatives", "scores"] and table.num_rows == 150
    rows = table.to_pylist()
    chosen = {r["query"]: len(r["negatives"]) for r in rows}
    # Every retrieved candidate is either a chosen negative or skipped for a counted reason.
    assert sum(report["skipped"].values()) + sum(chosen.values()) == report["candidates_retrieved"]
    assert report["skipped"]["positive"] > 100 and report["negatives_written"] == sum(len(r["negatives"]) for r in rows)
    for r in rows:
        assert r["positive"] not in r["negatives"] and len(r["scores"]) == 1 + len(r["negatives"])
        assert all(s <= 0.95 * r["scores"][0] + 1e-5 for s in r["scores"][1:])
    saved = json.loads((tmp_path / "m" / "mine_report.json").read_text())
    assert saved["skipped"] == report["skipped"] and saved["input"]["kept"] == 150
    loaded, _ = load_pairs(str(tmp_path / "m" / "pairs.parquet"), hard_negatives=3)
    assert len(loaded) == report["pairs"] - report["rows_short_of_negatives"]


def _unit_vectors(cosines: dict[str, tuple[float, float]], dim: int = 12) -> dict[str, np.ndarray]:
    """Texts → unit vectors whose cosines with the query axes e0, e1 are the given pair (one private axis each)."""
    out = {}
    for k, (a, b) in enumerate(cosines.items()):
        v = np.zeros(dim, dtype=np.float32)
        v[0], v[1], v[2 + k] = b[0], b[1], np.sqrt(1 - b[0] ** 2 - b[1] ** 2)
        out[a] = v
    return out


def test_teacher_rescoring_reranks_the_miners_candidates_and_applies_the_margin_to_its_scores():
    # (cosine with q1, cosine with q2) under the mining model and under the teacher.
    miner = _unit_vectors({"P1": (.9, .05), "P2": (.1, .9), "A": (.8, .1), "B": (.7, .2), "C": (.6, .3),
                           "D": (.5, .85), "E": (0., 0.)})
    teach = _unit_vectors({"P1": (.9, 0.), "P2": (.1, .6), "A": (.5, .1), "B": (.8, .58), "C": (.88, .45),
                           "D": (.7, .5), "E": (.95, .3)})
    axes = np.eye(12, dtype=np.float32)
    miner.update(q1=axes[0], q2=axes[1])
    teach.update(q1=axes[0], q2=axes[1])
    pairs = [{"query": "q1", "positive": "P1"}, {"query": "q2", "positive": "P2"}]
    corpus = ["P1", "P2", "A", "B", "C", "D", "E"]
    vectors = {"queries": np.stack([miner["q1"], miner["q2"]]), "positives": np.stack([miner["P1"], miner["P2"]]),
               "corpus": np.stack([miner[t] for t in corpus])}
    asked: list[str] = []

    def teacher(texts):
        asked.extend(texts)
        return np.stack([teach[t] for t in texts])

    rules = NegativeRules(num_negatives=1, relative_margin=0.05)
    rows, stats = mine(pairs, corpus, vectors, rules, top_k=4, query_chunk=1, seed=0, teacher=teacher)
    alone, alone_stats = mine(pairs, corpus, vectors, rules, top_k=4, query_chunk=1, seed=0)

    # Reference with numpy: the miner's top 4, re-ranked by the teacher, positive and > 95 % of its score dropped.
    for row, q, pos in zip(rows, ("q1", "q2"), ("P1", "P2")):
        top = np.argsort(-(vectors["corpus"] @ miner[q]), kind="stable")[:4]
        t = {corpus[j]: float(teach[corpus[j]] @ teach[q]) for j in top}
        want = [c for c in sorted(t, key=lambda c: -t[c]) if c != pos and t[c] <= 0.95 * t[pos]][:1]
        assert row["negatives"] == want
        assert np.allclose(row["scores"], [t[pos]] + [t[c] for c in want], atol=1e-6)
    assert [r["negatives"] for r in rows] == [["B"], ["D"]]         # teacher: C (q1) and B (q2) too close to P
    assert [r["negatives"] for r in alone] == [["A"], ["D"]]        # the miner alone: its own top candidate
    assert np.allclose(rows[0]["scores"], [.9, .8]) and np.allclose(rows[1]["scores"], [.6, .5])
    assert stats["skipped"] == {"positive": 2, "likely false negative": 2, "not sampled": 2}
    assert "likely false negative" not in alone_stats["skipped"]
    # E (the teacher's favourite) was never retrieved, so never embedded by the teacher.
    assert sorted(asked) == ["A", "B", "C", "D", "P1", "P2", "q1", "q2"]
    r = stats["rescore"]
    assert r["texts_embedded"] == 8 and r["candidate_corpus_rows"] == 6 and r["candidates_reranked"] == 8
    assert r["negatives_changed"] == 1 and np.isclose(r["positive_score_mean"], .75)
    assert np.isclose(r["negative_score_mean"], .65) and np.isclose(r["miner_positive_score_mean"], .9)
    assert "rescore" not in alone_stats


@pytest.mark.parametrize("mining, field, words", [
    ({"rescore_pooling": "cls"}, "mining.rescore_pooling", "is set but mining.rescore_with is not"),
    ({"rescore_with": "x", "rescore_max_length": 0}, "mining.rescore_max_length", "greater than 0"),
    ({"rescore_with": "x", "rescore_pooling": "max"}, "mining.rescore_pooling", "'mean' or 'cls'"),
])
def test_rescore_spec_errors_name_the_field(mining, field, words):
    with pytest.raises(SpecError) as err:
        parse_spec({"job": "mine", "mining": mining})
    assert field in str(err.value) and words in str(err.value)


def test_missing_rescore_teacher_fails_before_embedding(tmp_path):
    spec = parse_spec({"job": "mine", "storage_path": str(tmp_path),
                       "mining": {"rescore_with": str(tmp_path / "no-such-teacher")}})
    with pytest.raises(SpecError, match="mining.rescore_with: model .*no-such-teacher"):
        model_dicts(spec)


def test_mine_job_rescored_by_a_teacher_on_ray(ray_local, tmp_path, minilm_path, capsys):
    from fastemb.mine.job import run_mine
    from fastemb.model.encoder import Encoder

    # The teacher: the same weights with CLS pooling, so its ranking differs from the (mean-pooling) miner's.
    spec = parse_spec({"job": "mine", "name": "r", "storage_path": str(tmp_path),
                       "data": {"train": "wordnet", "max_pairs": 64},
                       "mining": {"top_k": 10, "num_negatives": 3, "query_chunk": 16, "rescore_with": minilm_path,
                                  "rescore_pooling": "cls"},
                       "embed": {"num_actors": 1, "batch_rows": 64}})
    report = run_mine(spec)
    rows = pq.read_table(tmp_path / "r" / "pairs.parquet").to_pylist()
    assert len(rows) == 64 and "[fastemb mine] rescored with" in capsys.readouterr().err
    enc = Encoder.load(minilm_path, pooling="cls")  # the spec leaves the length to the model: the folder's own
    texts = list(dict.fromkeys(t for r in rows for t in (r["query"], r["positive"], *r["negatives"])))
    vec = dict(zip(texts, normalize_rows(enc.encode(texts))))
    for r in rows:
        want = [float(vec[r["query"]] @ vec[t]) for t in (r["positive"], *r["negatives"])]
        assert np.allclose(r["scores"], want, atol=1e-4)
        assert all(s <= 0.95 * r["scores"][0] + 1e-5 for s in r["scores"][1:])
        assert r["scores"][1:] == sorted(r["scores"][1:], reverse=True)      # sampling top: the teacher's order
    res = report["rescore"]
    assert res["teacher"] == minilm_path and res["candidates_reranked"] == report["candidates_retrieved"]
    assert res["texts_embedded"] <= report["distinct_queries"] + report["corpus"] and res["negatives_changed"] > 0
    assert np.isclose(res["negative_score_mean"], np.mean([s for r in rows for s in r["scores"][1:]]), atol=1e-5)
    assert sum(report["skipped"].values()) + report["negatives_written"] == report["candidates_retrieved"]
    saved = json.loads((tmp_path / "r" / "mine_report.json").read_text())
    assert saved["rescore"] == res and "rescore_embed" in saved["timing_s"]
