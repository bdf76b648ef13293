"""Compression evaluation in the index job: exact search vs compressed configurations on a small labeled split."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fastemb.index.job import run_index
from fastemb.spec import parse_spec


@pytest.fixture(scope="module")
def manifest(ray_local, tiny_eval, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("runs")
    small = out / "small.parquet"   # the job's own corpus: kept small, the evaluation embeds the labeled split
    pq.write_table(pq.read_table(f"{tiny_eval}/test_corpus.parquet").slice(0, 40), small)
    spec = parse_spec({
        "job": "index", "name": "ev", "storage_path": str(out), "corpus": {"path": str(small)},
        "model": {"max_length": 64}, "ray": {"num_cpus": 2}, "embed": {"num_actors": 1},
        "index": {"type": "ivf_pq", "bytes_per_vector": 24, "pq_nbits": 4, "nlist": 4, "nprobe": 4,
                  "refine": "flat", "k_factor": 8},
        "evaluate": {"enabled": True, "eval": tiny_eval, "split": "test", "latency_queries": 20, "sweep": [
            {"name": "pca128 flat", "compress": {"method": "pca", "dim": 128}, "index": {"type": "flat", "refine": "none"}},
            {"name": "pq24 no refine", "index": {"refine": "none"}},
            {"name": "pq24 refine disk", "index": {"refine": "disk", "k_factor": None}},
            {"name": "binary int8 disk", "index": {"type": "binary", "nlist": None, "pq_nbits": 8, "refine": "disk",
                                                   "refine_dtype": "int8", "k_factor": None}},
        ]}})
    return run_index(spec)


def test_exact_is_the_reference(manifest):
    res = manifest["evaluation"]["results"]
    exact = res[0]
    assert exact["factory"] == "Flat" and exact["recall@10"] == 1.0 and exact["code_bytes"] == 384 * 4
    assert 0.3 < exact["ndcg@10"] <= 1.0 and exact["ndcg_kept"] == 1.0
    assert manifest["evaluation"]["queries"] == 40


def test_compressed_configs_report_the_tradeoff(manifest):
    by_name = {r["name"]: r for r in manifest["evaluation"]["results"]}
    job = by_name["job: ivf_pq"]
    assert job["factory"] == "IVF4,PQ48x4np,RFlat"        # 24 bytes of 4-bit codes = 48 sub-quantizers
    no_refine = by_name["pq24 no refine"]
    assert no_refine["code_bytes"] == 24 and no_refine["compression_x"] == 64
    assert job["recall@10"] > no_refine["recall@10"]            # re-ranking with the float vectors helps
    disk = by_name["pq24 refine disk"]                          # ... also when they stay on disk (fp16)
    assert disk["factory"] == "IVF4,PQ48x4np" and disk["code_bytes"] == 24 and disk["disk_bytes"] == 2 * 384
    assert disk["recall@10"] > no_refine["recall@10"] and job["disk_bytes"] == 0
    binary = by_name["binary int8 disk"]                        # sign bits in memory, int8 vectors on disk
    assert binary["factory"] == "LSH" and binary["code_bytes"] == 48 and binary["compression_x"] == 32
    assert binary["disk_bytes"] == 384 and binary["recall@10"] >= 0.9
    pca = by_name["pca128 flat"]
    assert pca["code_bytes"] == 512 and 0.5 < pca["recall@10"] < 1.0
    for r in manifest["evaluation"]["results"]:
        assert r["p99_ms"] >= r["p50_ms"] > 0 and r["build_s"] > 0 and r["file_bytes"] >= r["code_bytes"]
    assert Path(manifest["evaluation"]["plot"]).stat().st_size > 10_000


def test_the_evaluation_reuses_the_jobs_embeddings_for_the_splits_own_corpus_only(tiny_eval):
    """The job's corpus is the evaluated split's corpus file (the shipped set's ``wordnet:<split>``, or the folder's
    ``<split>_corpus.parquet`` itself): its embedding units are the split's, so the evaluation embeds nothing again."""
    from fastemb.index.evaluate import indexes_the_split

    def spec(corpus: str, eval_set: str = tiny_eval, split: str = "test", **corpus_fields):
        return parse_spec({"job": "index", "corpus": {"path": corpus, **corpus_fields},
                           "evaluate": {"enabled": True, "eval": eval_set, "split": split}})

    assert indexes_the_split(spec(f"{tiny_eval}/test_corpus.parquet"))
    assert indexes_the_split(spec(f"{tiny_eval}/../{Path(tiny_eval).name}/test_corpus.parquet"))
    assert indexes_the_split(spec("wordnet:dev", "wordnet", "dev"))
    assert not indexes_the_split(spec(f"{tiny_eval}/test_corpus.parquet", split="dev"))
    assert not indexes_the_split(spec(tiny_eval))  # the whole folder: its query files too
    assert not indexes_the_split(spec(f"{tiny_eval}/test_corpus.parquet", text_column="id"))
    assert not indexes_the_split(spec("wordnet:test", "wordnet", "dev"))
