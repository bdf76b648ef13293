"""A training job whose ``storage_path`` is an object-store URI (S3 API, served locally by moto's S3 server):
checkpoints are written to the bucket by the Ray Train workers, the exported model and report land there too,
and running the job again from an empty local staging folder finds the finished run in the bucket."""
from __future__ import annotations

import os

import pyarrow.fs as pafs
import pytest

from fastemb.spec import SpecError, parse_spec

moto_server = pytest.importorskip("moto.server")
BUCKET = "fastemb-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A local S3 endpoint and a bucket; a fresh Ray whose workers see the S3 credentials."""
    import ray

    from fastemb.ray_env import free_port, init_ray

    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = dict(os.environ)
    os.environ.update(AWS_ACCESS_KEY_ID="fastemb-test", AWS_SECRET_ACCESS_KEY="fastemb-test",
                      AWS_DEFAULT_REGION="us-east-1", FASTEMB_STAGING=str(tmp_path_factory.mktemp("staging")))
    uri = f"s3://{BUCKET}/runs?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    fs, _ = pafs.FileSystem.from_uri(uri)
    pafs.FileSystem.from_uri(uri + "&allow_bucket_creation=true")[0].create_dir(BUCKET)
    if ray.is_initialized():
        ray.shutdown()
    init_ray(num_cpus=2)  # started after the env is set: local workers inherit the credentials
    yield {"uri": uri, "fs": fs}
    ray.shutdown()
    server.stop()
    os.environ.clear()
    os.environ.update(saved)


def test_training_writes_checkpoints_model_and_report_to_the_bucket(s3, tiny_eval, tmp_path):
    import shutil

    from sentence_transformers import SentenceTransformer

    from fastemb.storage import pull
    from fastemb.train.driver import run_train

    spec = parse_spec({"name": "s3run", "storage_path": s3["uri"], "model": {"max_length": 32},
                       "data": {"max_pairs": 256, "eval": tiny_eval},
                       "train": {"micro_batch_size": 16, "num_workers": 2, "checkpoint_every": 3, "eval_every": 1000}})
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


def test_uri_storage_is_refused_where_unsupported():
    with pytest.raises(SpecError, match="storage_path"):
        parse_spec({"job": "index", "storage_path": "s3://bucket/runs"})
