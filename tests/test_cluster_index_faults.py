"""An index build submitted to a real multi-node cluster on one machine (cluster/local_cluster.py, token auth)
survives a killed task: an encoder actor's process (a Ray Data map worker, found through the cluster's state API)
is SIGKILLed mid-build; the job still SUCCEEDS and the index holds every document exactly once."""
from __future__ import annotations

import json
import subprocess
import sys

import faiss
import pyarrow.parquet as pq

from cluster_helpers import ROOT, live_actors, local_cluster
from index_helpers import N_ROWS, ActorKiller, write_fault_corpus


def test_submitted_index_build_survives_a_killed_encoder_actor(tmp_path):
    corpus = write_fault_corpus(tmp_path)
    storage = tmp_path / "shared"
    run = storage / "ixf"
    with local_cluster(workers=2, head_cpus=1, worker_cpus=1) as c:
        def encoder_pids() -> dict[int, str]:
            return {a["pid"]: a["actor_id"] for a in live_actors(c["state"]["dashboard"], c["token"])
                    if "MapWorker" in (a.get("class_name") or "") and a.get("pid")}

        killer = ActorKiller(run / "embeddings", timeout_s=600, live_pids=encoder_pids)
        killer.start()
        job = subprocess.run(
            [sys.executable, "-m", "fastemb.cli", "submit", "jobs/index.yaml", "name=ixf", f"storage_path={storage}",
             f"corpus.path={corpus['path']}", "embed.num_actors=2", "embed.batch_rows=32", "embed.rows_per_unit=1000000",
             "index.type=ivf_flat", "index.nlist=8", "index.refine=none", "index.add_tasks=2",
             "evaluate.enabled=false", "--follow"],
            env=c["env"], cwd=ROOT, capture_output=True, text=True, timeout=900)
        killer.join(timeout=5)
    assert job.returncode == 0, (job.stdout + job.stderr)[-6000:]
    assert "SUCCEEDED" in job.stderr
    assert killer.error is None and killer.killed_pid is not None, killer.error
    assert killer.unit_unfinished_at_kill                               # the kill happened mid-build
    ids = pq.read_table(run / "ids.parquet").column("id").to_pylist()
    assert len(ids) == len(set(ids)) == N_ROWS                          # nothing duplicated
    assert set(ids) == set(corpus["ids"])                               # nothing lost
    assert faiss.read_index(str(run / "index.faiss")).ntotal == N_ROWS
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["counts"]["index_entries"] == manifest["counts"]["documents_indexed"] == N_ROWS
