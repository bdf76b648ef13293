"""The ``fastemb index`` job end to end on small real data: Ray Data embedding with MiniLM actors, bad rows,
duplicate ids, an unreadable file, shard reuse on rerun, sharded faiss build + merge, and search."""
from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from fastemb.index.embed import shard_files
from fastemb.index.evaluate import recall_at_k
from fastemb.index.job import run_index
from fastemb.index.refine import STORE_FILE, rerank_from_disk
from fastemb.index.searcher import Searcher, search
from fastemb.index.shards import vectors_of
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
           "embed": {"num_actors": 1, "batch_rows": 64, "rows_per_unit": 100},  # 2 units: 2 actor starts
           "index": {"type": "ivf_flat", "nlist": 4, "nprobe": 4, "add_tasks": 2}}
    for k, v in over.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) else v
    return parse_spec(raw)


@pytest.fixture(scope="module")
def built(ray_local, corpus, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("runs")
    spec = _spec(corpus["path"], out)
    manifest = run_index(spec)
    return {"spec": spec, "manifest": manifest, "dir": spec.run_dir}


@pytest.mark.faults
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
    m = run_index(spec)
    assert m["embedding"]["units_reused"] == 2
    assert {p: p.stat().st_mtime_ns for p in emb.rglob("*.parquet")} == before
    assert m["counts"]["index_entries"] == N_GOOD and m["build"]["factory"] == "Flat"
    # exact search: the flat index ranks like the IVF one on its own documents
    assert Searcher(spec.run_dir).search([corpus["good"]["text"][5].as_py()], 1)[0][0]["id"] == \
        corpus["good"]["id"][5].as_py()


@pytest.mark.faults
def test_unreadable_file_can_fail_the_job(ray_local, corpus, tmp_path):
    from fastemb.data.pairs import DataError

    spec = _spec(corpus["path"], tmp_path, corpus={"on_bad_file": "fail"})
    with pytest.raises(DataError, match="part-2.parquet"):
        run_index(spec)


def test_spec_errors_name_the_field():
    with pytest.raises(SpecError, match="index.type"):
        parse_spec({"job": "index", "index": {"type": "annoy"}})
    with pytest.raises(SpecError, match="compress.dim"):
        parse_spec({"job": "index", "compress": {"method": "pca"}})
    with pytest.raises(SpecError, match="embed.batch_size"):
        parse_spec({"job": "index", "embed": {"batch_size": 3}})
    with pytest.raises(SpecError, match="queries"):
        parse_spec({"job": "search", "index_dir": "x"})
    with pytest.raises(SpecError, match="index.refine"):
        parse_spec({"job": "index", "index": {"type": "flat", "refine": "disk"}})


def test_cli_search(built, capsys):
    from fastemb.cli import main

    q = json.dumps(["a domesticated animal"])
    assert main(["search", f"index_dir={built['dir']}", f"queries={q}", "k=3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out[0]["hits"]) == 3 and {"id", "score", "text"} <= set(out[0]["hits"][0])


# ---- index.refine: disk -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def disk_built(built, corpus, ray_local) -> dict:
    """IVF-PQ (24 B of 4-bit codes) re-ranked from disk, built in 2 add tasks + merge from the ``built`` run's
    embedding shards (reused: bad rows and duplicates are skipped there too)."""
    spec = _spec(corpus["path"], Path(built["spec"].storage_path), name="disk",
                 embed={"output": str(built["dir"] / "embeddings")},
                 index={"type": "ivf_pq", "bytes_per_vector": 24, "pq_nbits": 4, "refine": "disk"})
    manifest = run_index(spec)
    return {"spec": spec, "manifest": manifest, "dir": spec.run_dir}


def _entry_vectors(run_dir: Path, manifest: dict) -> np.ndarray:
    """float32 vector of each id-map row (= faiss id), looked up in the embedding shards by (id, text)."""
    shards = pa.concat_tables([pq.read_table(f, columns=["id", "text", "skip", "vector"])
                               for f in shard_files(manifest["embedding"]["shard_dirs"])])
    shards = shards.filter(pc.is_null(shards["skip"]))
    by_key: dict[tuple, list[np.ndarray]] = {}
    for key, v in zip(zip(shards["id"].to_pylist(), shards["text"].to_pylist()), vectors_of(shards)):
        by_key.setdefault(key, []).append(v)
    id_map = pq.read_table(run_dir / "ids.parquet")
    store = np.fromfile(run_dir / STORE_FILE, dtype=np.float16).reshape(id_map.num_rows, -1)
    out = []
    for r, key in enumerate(zip(id_map["id"].to_pylist(), id_map["text"].to_pylist())):
        # an exact duplicate (same id and text) may be embedded twice: its vector is either copy's
        match = [v for v in by_key[key] if np.array_equal(store[r], v.astype(np.float16))]
        assert match, f"row {r} of {STORE_FILE} is not the vector of id-map row {r} ({key[0]})"
        out.append(match[0])
    return np.stack(out)


def test_refine_disk_writes_vectors_in_faiss_id_order(disk_built):
    d, m = disk_built["dir"], disk_built["manifest"]
    n, dim = m["counts"]["index_entries"], m["dims"]["index"]
    assert n == N_GOOD and dim == 384
    assert (d / STORE_FILE).stat().st_size == n * dim * 2
    b = m["build"]
    assert b["factory"] == "IVF4,PQ48x4np" and b["add_tasks"] == 2      # no in-memory refine; shards merged
    assert b["code_bytes_per_vector"] == 24                               # memory: the codes only
    assert b["refine"] == {"mode": "disk", "k_factor": 10, "in_memory": False, "file": STORE_FILE,
                           "dtype": "float16", "bytes": n * dim * 2, "bytes_per_vector_on_disk": 2 * dim}
    x = _entry_vectors(d, m)                                              # row r = vector of id-map row r
    index = faiss.read_index(str(d / "index.faiss"))
    faiss.extract_index_ivf(index).nprobe = 4
    assert np.mean(index.search(x, 1)[1][:, 0] == np.arange(n)) > 0.9     # ... = what faiss holds as id r


def test_refine_disk_search_beats_the_codes_alone(disk_built):
    s = Searcher(disk_built["dir"])
    x = _entry_vectors(disk_built["dir"], disk_built["manifest"])
    queries = pq.read_table(WORDNET / "test_queries.parquet").column("text").to_pylist()[:40]
    q = s.embed_queries(queries)
    exact = [list(r) for r in np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :10]]
    plain = recall_at_k([list(r) for r in s.index.search(q, 10)[1]], exact)
    disk = recall_at_k([[r for _, _, r in row] for row in s.search_vectors(q, 10)], exact)
    assert disk >= plain and disk >= 0.9, (disk, plain)
    # a definition finds itself, scored by its exact (fp16) inner product
    hit = s.search([pq.read_table(s.dir / "ids.parquet")["text"][7].as_py()], 3)[0]
    assert hit[0]["id"] == s.ids[7] and hit[0]["score"] > 0.99 and hit[0]["score"] >= hit[1]["score"]


def test_refine_disk_stores_the_compressed_vectors(disk_built, corpus, ray_local):
    from fastemb.compress import load_compressor

    spec = _spec(corpus["path"], Path(disk_built["spec"].storage_path), name="disk-pca",
                 embed={"output": str(disk_built["spec"].embed.output)}, compress={"method": "pca", "dim": 64},
                 index={"type": "pq", "bytes_per_vector": 16, "pq_nbits": 4, "refine": "disk", "k_factor": 20})
    m = run_index(spec)
    assert m["build"]["refine"]["bytes_per_vector_on_disk"] == 128 and m["build"]["refine"]["k_factor"] == 20
    store = np.fromfile(spec.run_dir / STORE_FILE, dtype=np.float16).reshape(N_GOOD, 64)
    ids = [pq.read_table(d / "ids.parquet")["id"].to_pylist() for d in (spec.run_dir, disk_built["dir"])]
    assert ids[0] == ids[1]                                               # same shards, same id order
    raw = _entry_vectors(disk_built["dir"], disk_built["manifest"])
    expected = load_compressor(spec.run_dir / "compressor").transform(raw)  # what the index holds, fp16-rounded
    assert np.abs(store.astype(np.float32) - expected).max() < 2e-3


def test_rerank_from_disk_orders_by_exact_score():
    store = np.array([[1, 0], [0, 1], [0.6, 0.8], [-1, 0]], dtype=np.float16)
    cand = np.array([[3, 1, 2, 0], [1, -1, -1, -1]])
    q = np.array([[1, 0], [1, 0]], dtype=np.float32)
    scores, ids = rerank_from_disk(cand, q, store, 3)
    assert ids.tolist() == [[0, 2, 1], [1, -1, -1]] and scores[0, 0] == 1 and scores[1, 1] == -np.inf
    dist, ids = rerank_from_disk(cand, q, store, 2, faiss.METRIC_L2)
    assert ids.tolist() == [[0, 2], [1, -1]] and dist[0, 0] == 0
