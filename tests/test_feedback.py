"""Clicks as weak supervision: Serve's search and click logs → weighted pairs (fastemb/feedback/), on ids and texts
of the shipped WordNet test corpus."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from fastemb.data.pairs import DataError, load_pairs
from fastemb.feedback.clicks import click_pairs, propensity_weight
from fastemb.feedback.job import run_feedback
from fastemb.index.corpus import resolve_corpus
from fastemb.spec import parse_spec


@pytest.fixture(scope="module")
def corpus() -> dict[str, str]:
    fs, files = resolve_corpus("wordnet:test")
    table = pq.read_table(files[0], columns=["id", "text"]).slice(0, 12)
    return dict(zip(map(str, table.column("id").to_pylist()), table.column("text").to_pylist()))


def _search(rid, query, shown, user="u1", ts=100.0, arm="production"):
    return {"type": "search", "request_id": rid, "arm": arm, "user": user, "queries": [query], "ids": [shown],
            "ts": ts}


def _click(rid, doc, user="u1", ts=101.0, index=0):
    return {"type": "feedback", "request_id": rid, "clicked_id": doc, "query_index": index, "user": user, "ts": ts}


def test_clicks_become_weighted_pairs_with_skip_above_negatives(corpus):
    a, b, c, d = list(corpus)[:4]
    events = [_search("r1", "q1", [a, b, c, d]), _click("r1", c),            # rank 3: weight 3, skipped a, b
              _search("r2", "q1", [b, a, c], user="u2"), _click("r2", a, user="u2")]  # rank 2: weight 2, skipped b
    pairs, counts = click_pairs(events, min_impressions=2)
    by_doc = {p["positive_id"]: p for p in pairs}
    assert set(by_doc) == {a, c} and counts.clicks_used == 2 and not counts.dropped
    assert by_doc[c]["weight"] == 3.0 and by_doc[a]["weight"] == 2.0   # 1 / P(seen | r) with P = 1/r
    assert by_doc[c]["negative_ids"] == [b]     # a was skipped above c, but clicked for q1 elsewhere: never a negative
    assert by_doc[a]["negative_ids"] == [b]
    plain, _ = click_pairs(events, min_impressions=2, propensity_eta=0.0, negatives="none")
    assert {p["weight"] for p in plain} == {1.0} and all(p["negative_ids"] == [] for p in plain)
    assert propensity_weight(50, 1.0, 10.0) == 10.0   # clipped


def test_bad_events_are_counted_by_reason_and_never_fatal(corpus):
    a, b, c = list(corpus)[:3]
    events = [_search("r1", "q1", [a, b, c]), _search("r2", "q1", [a, b, c], user="u2"),
              _search("r3", "rare", [a, b]),
              _click("r1", b), _click("r1", b),                         # the same event twice
              _click("r2", b, user="u1"),                               # u1 again on (q1, b) from another impression
              _click("nope", a), _click("r1", a, index=3),              # unknown request id, query index
              _click("r1", "not-shown"), _click("r3", b),               # an id not shown; a query seen once
              _click("r2", c, user="u2", ts=50.0),                      # stamped before its search: kept, noted
              {"type": "search", "request_id": "r4", "ids": [[a]]}]     # no query texts logged
    pairs, counts = click_pairs(events, min_impressions=2)
    assert counts.dropped == {"duplicated click event": 1, "repeat click by the same user": 1,
                              "click for an unknown request id or query index": 2,
                              "click on an id that was not shown": 1, "query searched fewer than 2 times": 1,
                              "search logged without its query texts (serve.log_queries: false?)": 1}
    assert counts.noted["click stamped before its search (clock skew; matched by request id)"] == 1
    assert {p["positive_id"] for p in pairs} == {b, c} and counts.clicks == 8


def test_export_writes_pairs_that_training_reads_with_weights(corpus, tmp_path):
    a, b, c, d = list(corpus)[:4]
    logs = tmp_path / "ab"
    logs.mkdir()
    events = [_search("r1", "q1", [a, b, c]), _click("r1", c), _search("r2", "q1", [a, b, c], user="u2"),
              _click("r2", b, user="u2"), _search("r3", "q2", ["missing-id", d]),
              _search("r4", "q2", ["missing-id", d], user="u2"), _click("r4", "missing-id", user="u2")]
    lines = [json.dumps(e) for e in events]
    (logs / "events-1-1.jsonl").write_text("\n".join(lines[:4]) + "\n")
    (logs / "events-2-1.jsonl").write_text("\n".join(lines[4:]) + '\n{"type": "feedback", "request_')  # cut mid-line
    out = tmp_path / "pairs.parquet"
    spec = parse_spec({"job": "feedback", "feedback_dir": str(logs), "corpus": "wordnet:test", "output": str(out),
                       "report": str(tmp_path / "report.json")})
    result = run_feedback(spec)
    assert result["pairs"] == 2 and result["dropped"] == {"line that is not JSON (a truncated log)": 1,
                                                          "clicked id not in the corpus (or its text is empty)": 1}
    assert json.loads((tmp_path / "report.json").read_text()) == result
    rows = {r["positive_id"]: r for r in pq.read_table(out).to_pylist()}
    assert rows[c]["positive"] == corpus[c] and rows[c]["query"] == "q1"
    assert rows[c]["negatives"] == [corpus[a]]  # b was skipped above c in r1 but clicked for q1 in r2
    assert rows[b]["negatives"] == [corpus[a]]
    assert sum(r["weight"] for r in rows.values()) == pytest.approx(2.0)  # mean 1
    assert rows[c]["weight"] == pytest.approx(2 * 3 / 5)                    # ranks 3 and 2: 3 / (3 + 2) of the mass
    pairs, report = load_pairs(str(out), hard_negatives=1)
    assert len(pairs) == 2 and {round(p["weight"], 6) for p in pairs} == {1.2, 0.8} and report.kept == 2


def test_pairs_weights_are_checked_and_default_to_one(tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"query": "q1", "positive": "p1", "weight": 2.0}, {"query": "q2", "positive": "p2", "weight": -1},
        {"query": "q3", "positive": "p3", "weight": "heavy"}, {"query": "q4", "positive": "p4"}]) + "\n")
    pairs, report = load_pairs(str(f))
    assert sorted((p["query"], p["weight"]) for p in pairs) == [("q1", 2.0), ("q4", 1.0)]
    assert report.skipped == {"weight not a positive number": 2}


def test_weights_ride_with_the_micro_batch_to_the_loss():
    from fastemb.train.batching import batch_hashes

    rows = [{"query": "q1", "positive": "p1", "weight": 1.5}, {"query": "q2", "positive": "p2", "weight": 0.5}]
    ids = batch_hashes(rows, 0)
    assert ids["weights"].dtype.name == "float32" and ids["weights"].tolist() == [1.5, 0.5]
    assert "weights" not in batch_hashes([{"query": "q", "positive": "p"}], 0)


def test_no_events_or_no_pairs_is_a_clear_error(tmp_path):
    spec = parse_spec({"job": "feedback", "feedback_dir": str(tmp_path), "corpus": "wordnet:test",
                       "output": str(tmp_path / "p.parquet")})
    with pytest.raises(DataError, match="feedback_dir: .*no events"):
        run_feedback(spec)
    (tmp_path / "events-1-1.jsonl").write_text(json.dumps(_search("r1", "q", ["x"])) + "\n")
    with pytest.raises(DataError, match="no pairs"):
        run_feedback(spec)
