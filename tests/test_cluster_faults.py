"""Fault tolerance on a real multi-node cluster on one machine (cluster/local_cluster.py): a submitted
training job survives the crash of a worker node that hosts one of its training workers (Ray Train
restarts the worker group, which resumes from the last checkpoint on the shared storage) and still
exports its model."""
from __future__ import annotations

import json
import subprocess
import sys
import time

from cluster_helpers import ROOT, local_cluster, live_actors, run_script, state_api


def _train_worker_nodes(dashboard: str, token: str) -> set[str]:
    """Names of the local-cluster nodes running a live RayTrainWorker."""
    actors = live_actors(dashboard, token)
    node_ids = {a["node_id"] for a in actors if a.get("class_name") == "RayTrainWorker"}
    names = set()
    for n in state_api(dashboard, "/api/v0/nodes?limit=1000&detail=false", token):
        if n["node_id"] in node_ids:
            names |= {k[len("fastemb_node_"):] for k in n.get("resources_total", {}) if k.startswith("fastemb_node_")}
    return names


def test_training_job_survives_losing_a_worker_node(tmp_path, tiny_eval):
    storage = tmp_path / "shared"
    run = storage / "ft"
    with local_cluster(workers=3, head_cpus=1, worker_cpus=1) as c:
        env = c["env"]
        job = subprocess.Popen(
            [sys.executable, "-m", "fastemb.cli", "submit", "jobs/contrastive.yaml", "name=ft",
             f"storage_path={storage}", "data.max_pairs=512", f"data.eval={tiny_eval}",
             "train.micro_batch_size=16", "train.checkpoint_every=2", "train.num_workers=2",
             "train.max_failures=2", "--follow"],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # Wait for the first checkpoint, then crash a worker node hosting a training worker.
            deadline = time.time() + 600
            victim = None
            while victim is None:
                assert job.poll() is None, "job ended before a checkpoint was written"
                assert time.time() < deadline, "no checkpoint within the wait limit"
                if list(run.glob("checkpoint_*")):
                    busy = sorted(_train_worker_nodes(c["state"]["dashboard"], c["token"]) - {"head"})
                    victim = busy[0] if busy else None
                time.sleep(1)
            killed = run_script("kill-node", "--dir", str(c["dir"] / "c"), "--node", victim, env=env)
            assert killed.returncode == 0, killed.stderr
            out, err = job.communicate(timeout=900)
        finally:
            if job.poll() is None:
                job.kill()
                job.communicate()
        assert job.returncode == 0, (out + err)[-6000:]
        assert "SUCCEEDED" in err
        report = json.loads((run / "report.json").read_text())
        assert report["resumes"] >= 1, "training did not resume from a checkpoint after the node loss"
        resumed_at = [h["step"] for h in report["history"] if h.get("event") == "resumed"]
        assert resumed_at and min(resumed_at) >= 2
        assert (run / "model" / "model.safetensors").is_file()
