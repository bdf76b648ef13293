"""Fault tolerance of ``fastemb index``: an encoder actor process is SIGKILLed mid-build (a real Ray Data
``_MapWorker`` found through Ray's state API), the build goes on (actor restarted, its tasks retried) and the
final index still holds exactly one entry per valid input row: no lost and no duplicated documents."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import faiss
import pyarrow.parquet as pq
import pytest

from fastemb.index.job import run_index
from fastemb.spec import parse_spec

WORDNET = Path(__file__).resolve().parents[1] / "fastemb" / "datasets" / "wordnet"
N_ROWS = 600


def _encoder_actor_pids() -> dict[int, str]:
    """pid → actor id of the live Ray Data map workers (the encoder actor pool)."""
    import ray
    from ray.util.state import list_actors

    actors = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")],
                         limit=1000, raise_on_missing_output=False)
    return {a.pid: a.actor_id for a in actors if "MapWorker" in a.class_name and a.pid}


class ActorKiller(threading.Thread):
    """Waits until an encoder actor has embedded at least one batch (its peak-memory file exists in the unit's
    temporary folder), then SIGKILLs that actor's worker process once, while the unit is still unfinished."""

    def __init__(self, emb_dir: Path, timeout_s: float = 300):
        super().__init__(daemon=True)
        self.emb_dir, self.timeout_s = emb_dir, timeout_s
        self.killed_pid: int | None = None
        self.unit_unfinished_at_kill = False
        self.error: str | None = None

    def run(self) -> None:
        try:
            self._watch_and_kill()
        except Exception as err:  # reported by the test, not lost in the thread
            self.error = repr(err)

    def _watch_and_kill(self) -> None:
        deadline = time.time() + self.timeout_s
        while time.time() < deadline:
            busy = {int(p.stem): p.parents[1] for p in self.emb_dir.glob("unit-*.tmp/_rss/*.rss")}
            live = _encoder_actor_pids() if busy else {}
            for pid, unit_tmp in busy.items():
                if pid in live:
                    os.kill(pid, signal.SIGKILL)
                    self.killed_pid = pid
                    self.unit_unfinished_at_kill = not (unit_tmp / "_SUCCESS").exists()
                    return
            time.sleep(0.2)
        self.error = "no encoder actor was seen working before the timeout"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fault_corpus")
    defs = pq.read_table(WORDNET / "all_definitions.parquet").slice(0, N_ROWS)
    half = N_ROWS // 2
    pq.write_table(defs.slice(0, half), root / "part-0.parquet")
    pq.write_table(defs.slice(half), root / "part-1.parquet")
    return {"path": str(root), "ids": defs.column("id").to_pylist()}


def test_killed_encoder_actor_loses_and_duplicates_nothing(ray_local, corpus, tmp_path):
    spec = parse_spec({"job": "index", "name": "fault", "storage_path": str(tmp_path),
                       "corpus": {"path": corpus["path"]}, "model": {"max_length": 64}, "ray": {"num_cpus": 2},
                       "embed": {"num_actors": 2, "batch_rows": 32, "rows_per_unit": 10**6},
                       "index": {"type": "ivf_flat", "nlist": 8, "add_tasks": 2}})
    killer = ActorKiller(spec.run_dir / "embeddings")
    killer.start()
    manifest = run_index(spec, log=lambda *_: None)
    killer.join(timeout=5)
    assert killer.error is None and killer.killed_pid is not None
    assert killer.unit_unfinished_at_kill                       # the kill happened mid-build
    with pytest.raises(ProcessLookupError):
        os.kill(killer.killed_pid, 0)                          # the process really is gone
    ids = pq.read_table(spec.run_dir / "ids.parquet").column("id").to_pylist()
    assert len(ids) == len(set(ids)) == N_ROWS                 # no duplicated entry
    assert set(ids) == set(corpus["ids"])                      # no lost document
    assert faiss.read_index(str(spec.run_dir / "index.faiss")).ntotal == N_ROWS
    assert manifest["counts"]["index_entries"] == manifest["counts"]["documents_indexed"] == N_ROWS
    assert manifest["counts"]["skipped"] == {}
    # every shard row was embedded exactly once, so no skipped or duplicate row hides a retry's output
    shards = pq.read_table(spec.run_dir / "embeddings", columns=["id"]).column("id").to_pylist()
    assert sorted(shards) == sorted(corpus["ids"])
