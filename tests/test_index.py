"""The ``fastemb index`` job end to end on small real data: Ray Data embedding with MiniLM actors, bad rows,
duplicate ids, an unreadable file, shard reuse on rerun, sharded faiss build + merge, and search."""
from __future__ import annotations

import json
from pathlib import Path

import faiss
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fastemb.index.job import run_index
from fastemb.index.search import Searcher, search
from fastemb.spec import SpecError, parse_spec

WORDNET = Path(__file__).resolve().parents[1] / "fastemb" / "datasets" / "wordnet"
N_GOOD = 160


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """Three parquet files: clean definitions, one with bad rows and duplicates, one corrupt file."""
    root = tmp_path_factory.mktemp("corpus")
    defs = pq.read_table(WORDNET / "all_definitions.parquet").slice(0, N_GOOD + 5)
    good, extra = defs.slice(0, N_GOOD), defs.slice(N_GOOD, 5).to_pylist()
    pq.write_table(good.slice(0, 100), root / "part-0.parquet")
    first = good.slice(0, 1).to_pylist()[0]
    rows = good.slice(100).to_pylist() + [
        {"id": extra[0]["id"], "text": None},                        # null text
        {"id": extra[1]["id"], "text": "   "},                       # empty text
        {"id": first["id"], "text": first["text"]},                  # exact duplicate of a row in part-0
        {"id": first["id"], "text": "a different text, same id"},    # duplicate id, other text
        {"id": None, "text": "a text without an id"},                # null id
    ]
    texts = pa.array([None if r["text"] is None else r["text"].encode() for r in rows] + [b"caf\xe9 latin-1"],
                     pa.binary()).view(pa.string())                  # last row: non-UTF-8 bytes
    ids = pa.array([r["id"] for r in rows] + [extra[2]["id"]], pa.string())
    pq.write_table(pa.table({"id": ids, "text": texts}), root / "part-1.parquet")
    (root / "part-2.parquet").write_bytes(b"PAR1 this is not a parquet file")
    return {"path": str(root), "good": good}


def _spec(corpus_path: str, out: Path, **over) -> object:
    raw = {"job": "index", "name": "t", "storage_path": str(out), "corpus": {"path": corpus_path},
           "model": {"max_length": 64}, "ray": {"num_cpus": 2},
           "embed": {"num_actors": 2, "batch_rows": 64, "rows_per_unit": 100},
           "index": {"type": "ivf_flat", "nlist": 4, "nprobe": 4, "add_tasks": 2}}
    for k, v in over.items():
        raw[k] = {**raw.get(k, {}), **v}
    return parse_spec(raw)


@pytest.fixture(scope="module")
def built(ray_local, corpus, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("runs")
    spec = _spec(corpus["path"], out)
    manifest = run_index(spec, log=lambda *_: None)
    return {"spec": spec, "manifest": manifest, "dir": spec.run_dir}


def test_one_entry_per_valid_row_and_bad_rows_counted(built, corpus):
    m = built["manifest"]
    expected = corpus["good"].column("id").to_pylist()
    ids = pq.read_table(built["dir"] / "ids.parquet").column("id").to_pylist()
    assert sorted(ids) == sorted(expected)                       # each valid id exactly once
    index = faiss.read_index(str(built["dir"] / "index.faiss"))
    assert index.ntotal == len(expected) == m["counts"]["index_entries"] == m["counts"]["documents_indexed"]
    assert m["counts"]["skipped"] == {"null": 1, "empty": 1, "null id": 1, "non-UTF-8 text": 1,
                                      "duplicate id": 2, "unreadable file": 1}
    assert list(m["counts"]["unreadable_files"]) == [str(Path(corpus["path"]) / "part-2.parquet")]
    assert m["counts"]["rows_read"] == N_GOOD + 6
    assert m["build"]["add_tasks"] == 2 and m["embedding"]["units"] == 2
    assert m["memory"]["driver_peak_rss_mb"] > 0 and m["memory"]["worker_peak_rss_mb"] > 0
    kept_first = [t for i, t in zip(ids, pq.read_table(built["dir"] / "ids.parquet")["text"].to_pylist())
                  if i == expected[0]]
    assert kept_first == [corpus["good"]["text"][0].as_py()]   # the duplicate with the other text was dropped


def test_search_returns_ids_scores_texts(built, corpus):
    rows = corpus["good"].slice(10, 3).to_pylist()
    hits = search(built["dir"], [r["text"] for r in rows], k=5)
    assert [h[0]["id"] for h in hits] == [r["id"] for r in rows]  # a definition finds itself first
    assert hits[0][0]["text"] == rows[0]["text"]
    assert all(h[0]["score"] > 0.95 and len(h) == 5 for h in hits)
    assert all(h[i]["score"] >= h[i + 1]["score"] for h in hits for i in range(4))


def test_rerun_reuses_embedding_shards_and_rebuilds_other_index(built, corpus, ray_local):
    emb = built["dir"] / "embeddings"
    before = {p: p.stat().st_mtime_ns for p in emb.rglob("*.parquet")}
    spec = _spec(corpus["path"], Path(built["spec"].storage_path), index={"type": "flat"})
    m = run_index(spec, log=lambda *_: None)
    assert m["embedding"]["units_reused"] == 2
    assert {p: p.stat().st_mtime_ns for p in emb.rglob("*.parquet")} == before
    assert m["counts"]["index_entries"] == N_GOOD and m["build"]["factory"] == "Flat"
    # exact search: the flat index ranks like the IVF one on its own documents
    assert Searcher(spec.run_dir).search([corpus["good"]["text"][5].as_py()], 1)[0][0]["id"] == \
        corpus["good"]["id"][5].as_py()


def test_unreadable_file_can_fail_the_job(ray_local, corpus, tmp_path):
    from fastemb.data.pairs import DataError

    spec = _spec(corpus["path"], tmp_path, corpus={"on_bad_file": "fail"})
    with pytest.raises(DataError, match="part-2.parquet"):
        run_index(spec, log=lambda *_: None)


def test_spec_errors_name_the_field():
    with pytest.raises(SpecError, match="index.type"):
        parse_spec({"job": "index", "index": {"type": "annoy"}})
    with pytest.raises(SpecError, match="compress.dim"):
        parse_spec({"job": "index", "compress": {"method": "pca"}})
    with pytest.raises(SpecError, match="embed.batch_size"):
        parse_spec({"job": "index", "embed": {"batch_size": 3}})
    with pytest.raises(SpecError, match="queries"):
        parse_spec({"job": "search", "index_dir": "x"})


def test_cli_search(built, capsys):
    from fastemb.cli import main

    q = json.dumps(["a domesticated animal"])
    assert main(["search", f"index_dir={built['dir']}", f"queries={q}", "k=3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out[0]["hits"]) == 3 and {"id", "score", "text"} <= set(out[0]["hits"][0])
