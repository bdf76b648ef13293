"""Fault tolerance of ``fastemb index``: an encoder actor process (a real Ray Data ``_MapWorker`` found through Ray's
state API) is SIGKILLed while it holds an embedded batch of its unit unreturned (embed.py's test hook), so the unit is
provably unfinished; Ray restarts the actor (its restart count in Ray's state), its batch runs again, and the final
index still holds exactly one entry per valid input row: no lost and no duplicated documents."""
from __future__ import annotations

import os

import faiss
import pyarrow.parquet as pq
import pytest

from fastemb.index.job import run_index
from fastemb.spec import parse_spec
from index_helpers import HOLD_ENV, N_ROWS, HeldActorKiller, actor_restarts, write_fault_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    return write_fault_corpus(tmp_path_factory.mktemp("fault_corpus"))


@pytest.mark.faults
def test_killed_encoder_actor_loses_and_duplicates_nothing(ray_local, corpus, tmp_path, monkeypatch):
    spec = parse_spec({"job": "index", "name": "fault", "storage_path": str(tmp_path),
                       "corpus": {"path": corpus["path"]}, "model": {"max_length": 64}, "ray": {"num_cpus": 2},
                       "embed": {"num_actors": 2, "batch_rows": 32, "rows_per_unit": 10**6},
                       "index": {"type": "ivf_flat", "nlist": 8, "add_tasks": 2}})
    killer = HeldActorKiller(tmp_path / "hold")
    monkeypatch.setenv(HOLD_ENV, str(killer.hold_file))
    killer.start()
    manifest = run_index(spec)
    killer.join(timeout=5)
    assert killer.error is None and killer.killed_pid is not None, killer.error
    assert killer.unit_unfinished_at_kill                       # killed holding a batch of an unpublished unit
    with pytest.raises(ProcessLookupError):
        os.kill(killer.killed_pid, 0)                          # the process really is gone
    assert actor_restarts(killer.killed_actor) >= 1             # and Ray restarted that actor
    ids = pq.read_table(spec.run_dir / "ids.parquet").column("id").to_pylist()
    assert len(ids) == len(set(ids)) == N_ROWS                 # no duplicated entry
    assert set(ids) == set(corpus["ids"])                      # no lost document
    assert faiss.read_index(str(spec.run_dir / "index.faiss")).ntotal == N_ROWS
    assert manifest["counts"]["index_entries"] == manifest["counts"]["documents_indexed"] == N_ROWS
    assert manifest["counts"]["skipped"] == {}
    # every shard row was embedded exactly once, so no skipped or duplicate row hides a retry's output
    shards = pq.read_table(spec.run_dir / "embeddings", columns=["id"]).column("id").to_pylist()
    assert sorted(shards) == sorted(corpus["ids"])
