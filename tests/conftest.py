"""Shared fixtures: one Ray instance per test module, small real data made from the shipped WordNet set."""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDNET = Path(__file__).resolve().parents[1] / "fastemb" / "datasets" / "wordnet"


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray for the whole test module (2 CPUs), shut down afterwards."""
    import ray

    from fastemb.ray_env import init_ray

    if ray.is_initialized():
        ray.shutdown()
    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_eval(tmp_path_factory) -> str:
    """A small real evaluation folder: 40 WordNet queries per split against 300 definitions."""
    out = tmp_path_factory.mktemp("tiny_eval")
    for split in ("dev", "test"):
        corpus = pq.read_table(WORDNET / f"{split}_corpus.parquet")
        queries = pq.read_table(WORDNET / f"{split}_queries.parquet").slice(0, 40)
        wanted = pa.array([ids[0] for ids in queries.column("relevant_ids").to_pylist()])
        relevant = corpus.filter(pc.is_in(corpus["id"], value_set=wanted))
        others = corpus.filter(pc.invert(pc.is_in(corpus["id"], value_set=wanted))).slice(0, 260)
        pq.write_table(pa.concat_tables([relevant, others]), out / f"{split}_corpus.parquet")
        pq.write_table(queries, out / f"{split}_queries.parquet")
    return str(out)


@pytest.fixture(scope="session")
def minilm_path() -> str:
    from fastemb.model.encoder import default_model_path

    return default_model_path()
