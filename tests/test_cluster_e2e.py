"""Acceptance: a local multi-node cluster with token auth (cluster/local_cluster.py: head + 2 worker
nodes), `fastemb submit jobs/contrastive.yaml ... --follow` to SUCCEEDED, the exported model on the
shared storage, the job visible through `fastemb jobs`, and the token nowhere in output or job info."""
from __future__ import annotations

import json
import subprocess
import sys

from cluster_helpers import ROOT, local_cluster


def _fastemb(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastemb.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_submit_contrastive_to_local_cluster(tmp_path, tiny_eval):
    storage = tmp_path / "shared"
    with local_cluster(workers=2, head_cpus=1, worker_cpus=1) as c:
        env = c["env"]
        p = _fastemb("submit", "jobs/contrastive.yaml", "name=e2e", f"storage_path={storage}",
                     "data.max_pairs=256", f"data.eval={tiny_eval}", "train.micro_batch_size=16",
                     "train.checkpoint_every=4", "train.num_workers=2", "--follow", env=env, timeout=900)
        out = p.stdout + p.stderr
        assert p.returncode == 0, out[-6000:]
        sid = p.stdout.splitlines()[0].strip()
        assert sid.startswith("fastemb-train-e2e-")
        assert f"job {sid} SUCCEEDED" in p.stderr
        assert "[fastemb train]" in p.stdout  # the driver's logs were followed
        assert c["token"] not in out

        # Exported where the spec says, by the job running on the cluster.
        run = storage / "e2e"
        model = run / "model"
        assert (model / "model.safetensors").is_file() and (model / "modules.json").is_file()
        report = json.loads((run / "report.json").read_text())
        assert report["model_dir"] == str(model) and report["spec"]["ray"]["address"] == "auto"
        assert report["tuned"]["ndcg@10"] > 0

        st = _fastemb("jobs", "status", sid, env=env)
        assert st.returncode == 0 and st.stdout.startswith("SUCCEEDED")
        ls = _fastemb("jobs", "list", env=env)
        assert ls.returncode == 0 and sid in ls.stdout
        logs = _fastemb("jobs", "logs", sid, env=env)
        assert logs.returncode == 0 and "exported" in logs.stdout

        # Nothing secret in what the cluster stores about the job.
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(c["state"]["dashboard"], headers={"Authorization": f"Bearer {c['token']}"})
        info = client.get_job_info(sid)
        assert info.metadata == {"fastemb_job": "train", "fastemb_spec": "jobs/contrastive.yaml",
                                 "fastemb_name": "e2e"}
        stored = json.dumps({"entrypoint": info.entrypoint, "metadata": info.metadata,
                             "runtime_env": info.runtime_env})
        assert c["token"] not in stored and "RAY_AUTH_TOKEN" not in stored
        assert c["token"] not in client.get_job_logs(sid)
