"""Jobs whose ``storage_path`` is an object-store URI (S3 API, served locally by moto's S3 server).

Training: checkpoints are written to the bucket by the Ray Train workers, the exported model and report land there
too, and running the job again from an empty local staging folder finds the finished run in the bucket.
Indexing: the index, id map, manifest and embedding units land in the bucket, a rerun from an empty staging folder
reuses the units from the bucket, and search reads the index from its URI."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from fastemb.spec import SpecError, parse_spec

moto_server = pytest.importorskip("moto.server")
BUCKET = "fastemb-test"
WORDNET = Path(__file__).resolve().parents[1] / "fastemb" / "datasets" / "wordnet"


@pytest.fixture(scope="module")
def s3(ray_local, tmp_path_factory):
    """A local S3 endpoint and a bucket. The session's Ray workers see its credentials (tests/conftest.py sets them
    before Ray starts)."""
    from fastemb.ray_env import free_port

    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    staging = os.environ.get("FASTEMB_STAGING")
    os.environ["FASTEMB_STAGING"] = str(tmp_path_factory.mktemp("staging"))  # read by this driver process only
    uri = f"s3://{BUCKET}/runs?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    fs, _ = pafs.FileSystem.from_uri(uri)
    pafs.FileSystem.from_uri(uri + "&allow_bucket_creation=true")[0].create_dir(BUCKET)
    yield {"uri": uri, "fs": fs}
    server.stop()
    if staging is None:
        os.environ.pop("FASTEMB_STAGING")
    else:
        os.environ["FASTEMB_STAGING"] = staging


def test_training_writes_checkpoints_model_and_report_to_the_bucket(s3, tiny_eval, tmp_path, tiny_model):
    import shutil

    from sentence_transformers import SentenceTransformer

    from fastemb.storage import pull
    from fastemb.train.job import run_train

    spec = parse_spec({"name": "s3run", "storage_path": s3["uri"], "model": {"base": tiny_model, "max_length": 32},
                       "data": {"max_pairs": 96, "eval": tiny_eval}, "general": None,
                       "train": {"micro_batch_size": 16, "num_workers": 2, "checkpoint_every": 1000, "eval_every": 1000}})
    report = run_train(spec)
    assert report["output"] == f"s3://{BUCKET}/runs/s3run"
    fs = s3["fs"]
    names = {i.base_name for i in fs.get_file_info(pafs.FileSelector(f"{BUCKET}/runs/s3run"))}
    assert any(n.startswith("checkpoint_") for n in names), names       # written by the Ray Train workers
    assert {"model", "report.json", "training_curve.png", "base_metrics.json"} <= names
    assert fs.get_file_info(f"{BUCKET}/runs/s3run/model/model.safetensors").type == pafs.FileType.File

    # The bucket alone is enough: fetch the run elsewhere and load the model with sentence-transformers.
    elsewhere = tmp_path / "copy"
    assert pull(s3["uri"], "s3run", elsewhere) >= 4
    model = SentenceTransformer(str(elsewhere / "model"), device="cpu")
    assert model.encode(["a small domesticated carnivore"]).shape == (1, 384)

    # A rerun from an empty staging folder: the finished run is found in the bucket, nothing is trained again.
    shutil.rmtree(spec.run_dir)
    again = run_train(spec)
    assert again["plan"] == report["plan"]
    assert abs(again["tuned"]["ndcg@10"] - report["tuned"]["ndcg@10"]) < 1e-9


def _names(fs: pafs.FileSystem, path: str) -> set[str]:
    return {i.base_name for i in fs.get_file_info(pafs.FileSelector(path))}


@pytest.mark.faults
def test_folders_are_published_whole_or_not_at_all(s3, tmp_path):
    from fastemb.storage import pull_folders, push_folder

    fs, unit = s3["fs"], tmp_path / "unit-0"
    unit.mkdir()
    (unit / "a.parquet").write_text("new")
    (unit / "_SUCCESS").write_text("{}")
    store = f"{BUCKET}/runs/folders/units"
    with fs.open_output_stream(f"{store}/unit-0/stale.parquet") as f:  # a partial upload of a crashed run
        f.write(b"old")
    with fs.open_output_stream(f"{store}/unit-1/b.parquet") as f:      # unfinished: never fetched
        f.write(b"partial")
    assert pull_folders(s3["uri"], "folders", "units", tmp_path / "got") == 0
    assert push_folder(unit, s3["uri"], "folders", "units/unit-0")
    assert _names(fs, f"{store}/unit-0") == {"a.parquet", "_SUCCESS"}  # the stale file was cleared
    assert not push_folder(unit, s3["uri"], "folders", "units/unit-0")  # already published
    assert pull_folders(s3["uri"], "folders", "units", tmp_path / "got") == 1
    assert (tmp_path / "got" / "unit-0" / "a.parquet").read_text() == "new"
    assert not (tmp_path / "got" / "unit-1").exists()


def test_index_job_publishes_to_the_bucket_reuses_its_shards_and_is_searchable_by_uri(s3, tmp_path, tiny_model):
    from fastemb.index.job import run_index
    from fastemb.index.searcher import INDEX_FILES, Searcher, search
    from fastemb.storage import local_copy, run_uri

    defs = pq.read_table(WORDNET / "all_definitions.parquet").slice(0, 300)
    pq.write_table(defs, tmp_path / "corpus.parquet")
    spec = parse_spec({"job": "index", "name": "s3index", "storage_path": s3["uri"],
                       "corpus": {"path": str(tmp_path / "corpus.parquet")},
                       "model": {"base": tiny_model, "max_length": 32},
                       "ray": {"num_cpus": 2}, "embed": {"num_actors": 1, "batch_rows": 64},
                       "index": {"type": "ivf_flat", "nlist": 4, "nprobe": 4, "add_tasks": 2}})
    manifest = run_index(spec)
    fs, root = s3["fs"], f"{BUCKET}/runs/s3index"
    assert manifest["location"] == run_uri(s3["uri"], "s3index") and manifest["embedding"]["units_reused"] == 0
    assert {"manifest.json", "index.faiss", "ids.parquet", "embeddings"} <= _names(fs, root)
    units = _names(fs, f"{root}/embeddings")
    assert len(units) == 1 and all("_SUCCESS" in _names(fs, f"{root}/embeddings/{u}") for u in units)

    # Search by URI: the index is fetched into a local cache (not the shards) and ranks like the local folder.
    queries = defs.column("text").to_pylist()[10:15]
    local_hits = Searcher(spec.run_dir).search(queries, 5)
    uri_hits = search(manifest["location"], queries, k=5)
    assert [[h["id"] for h in row] for row in uri_hits] == [[h["id"] for h in row] for row in local_hits]
    assert uri_hits[0][0]["id"] == defs.column("id")[10].as_py()
    cached = local_copy(manifest["location"], INDEX_FILES)
    assert (cached / "index.faiss").is_file() and not (cached / "embeddings").exists()
    stamp = (cached / "index.faiss").stat().st_mtime_ns
    Searcher(manifest["location"])                                   # manifest unchanged: nothing fetched again
    assert (cached / "index.faiss").stat().st_mtime_ns == stamp

    # A rerun from an empty staging folder (another node): the units come from the bucket, nothing is re-embedded.
    shutil.rmtree(spec.run_dir)
    again = run_index(spec)
    assert again["embedding"]["units_reused"] == again["embedding"]["units"] == 1
    assert again["counts"]["index_entries"] == manifest["counts"]["index_entries"] == 300
    assert [[h["id"] for h in row] for row in search(again["location"], queries, k=5)] == \
        [[h["id"] for h in row] for row in local_hits]              # the new manifest: fetched again
    assert (cached / "index.faiss").stat().st_mtime_ns != stamp


def test_uri_storage_is_refused_where_unsupported():
    with pytest.raises(SpecError, match="storage_path: .* a tune job needs"):
        parse_spec({"job": "tune", "storage_path": "s3://bucket/runs"})
