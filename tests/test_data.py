"""Pairs and evaluation sets: bad rows are counted and reported, never silently dropped."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fastemb.data.build_wordnet import parse_data_line
from fastemb.data.eval_sets import load_eval_set
from fastemb.data.pairs import DataError, load_pairs
from fastemb.train.trainer import plan_steps
from fastemb.spec import SpecError, parse_spec


def test_shipped_wordnet_split_has_no_synset_leakage():
    from tests.conftest import WORDNET

    train = set(pq.read_table(WORDNET / "train.parquet").column("synset").to_pylist())
    test = set(pq.read_table(WORDNET / "test_corpus.parquet").column("id").to_pylist())
    dev = set(pq.read_table(WORDNET / "dev_corpus.parquet").column("id").to_pylist())
    assert len(test) == 20_000 and len(dev) == 5_000 and len(train) > 90_000
    assert not (train & test) and not (train & dev) and not (dev & test)
    ev = load_eval_set("wordnet", "test")
    assert len(ev.queries) == 2_000 and len(ev.corpus) == 20_000


def test_wordnet_line_parser():
    line = ("02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 002 @ 02083346 n 0000 "
            "| a member of the genus Canis; \"the dog barked all night\"  \n")
    sid, lemmas, definition = parse_data_line(line, "n")
    assert sid == "n02084071" and lemmas == ["dog", "domestic dog", "Canis familiaris"]
    assert definition == "a member of the genus Canis"


@pytest.mark.faults
def test_bad_pair_rows_are_counted(tmp_path):
    rows = [{"query": "a", "positive": "b"}, {"query": None, "positive": "b"}, {"query": "a", "positive": "  "},
            {"query": 3, "positive": "b"}, {"query": "c", "positive": "d"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    pairs, report = load_pairs(str(path))
    assert [p["query"] for p in pairs] == ["a", "c"]
    assert report.read == 6 and report.kept == 2
    assert report.skipped == {"query null": 1, "positive empty": 1, "query not a string (int)": 1,
                              "invalid JSON": 1}


def test_hard_negative_rows(tmp_path):
    table = pa.table({"query": ["a", "b"], "positive": ["x", "y"], "negatives": [["n1", "", "n2"], ["n3"]]})
    pq.write_table(table, tmp_path / "p.parquet")
    pairs, report = load_pairs(str(tmp_path / "p.parquet"), hard_negatives=2)
    assert pairs == [{"query": "a", "positive": "x", "negatives": ["n1", "n2"]}]
    assert report.negatives_removed == 1 and report.skipped == {"fewer than 2 negatives": 1}


def test_missing_file_empty_data_and_missing_columns(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_pairs(str(tmp_path / "nope.parquet"))
    pq.write_table(pa.table({"query": [None], "positive": ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="no usable pairs"):
        load_pairs(str(tmp_path / "bad.parquet"))
    pq.write_table(pa.table({"question": ["q"], "answer": ["x"]}), tmp_path / "cols.parquet")
    with pytest.raises(DataError, match="missing column"):
        load_pairs(str(tmp_path / "cols.parquet"))


def test_batch_larger_than_data_is_a_spec_error():
    spec = parse_spec({"train": {"micro_batch_size": 64, "num_workers": 2}})
    with pytest.raises(SpecError, match="train.micro_batch_size"):
        plan_steps(spec, 100)
    plan = plan_steps(spec, 1000)
    assert plan["micro_steps_per_epoch"] == 7 and plan["total_steps"] == 7


def test_eval_set_corpus_limit_keeps_every_relevant_text():
    from fastemb.data.eval_sets import load_eval_set

    full = load_eval_set("wordnet", "dev")
    small = load_eval_set("wordnet", "dev", max_corpus=1200)
    assert len(small.corpus) == 1200 and small.queries == full.queries
    assert all(r <= set(small.corpus_ids) for r in small.relevant)
    assert small.report["corpus"]["skipped"]["beyond max_corpus"] == len(full.corpus) - 1200
