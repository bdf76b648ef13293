"""A submitted training job that is stopped (`fastemb jobs stop`) resumes from its last checkpoint when
the same spec (same name and storage_path) is submitted again."""
from __future__ import annotations

import json
import subprocess
import sys
import time

from cluster_helpers import ROOT, local_cluster


def _fastemb(*args: str, env: dict, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastemb.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_stopped_job_resumes_when_resubmitted(tmp_path, tiny_eval):
    storage = tmp_path / "shared"
    run = storage / "rs"
    spec = ["jobs/contrastive.yaml", "name=rs", f"storage_path={storage}", "data.max_pairs=512",
            f"data.eval={tiny_eval}", "train.micro_batch_size=16", "train.checkpoint_every=2", "train.num_workers=2"]
    with local_cluster(workers=2, head_cpus=1, worker_cpus=1) as c:
        env = c["env"]
        first = _fastemb("submit", *spec, env=env)
        assert first.returncode == 0, first.stderr
        sid = first.stdout.splitlines()[0].strip()
        deadline = time.time() + 600
        while not list(run.glob("checkpoint_*")):
            st = _fastemb("jobs", "status", sid, env=env)
            assert st.stdout.startswith(("PENDING", "RUNNING")), f"job ended before a checkpoint: {st.stdout}"
            assert time.time() < deadline, "no checkpoint within the wait limit"
            time.sleep(2)
        stop = _fastemb("jobs", "stop", sid, "--wait", env=env)
        assert stop.returncode == 3 and stop.stdout.strip() == "STOPPED", stop.stdout + stop.stderr
        assert not (run / "report.json").exists()

        again = _fastemb("submit", *spec, "--follow", env=env, timeout=900)
        assert again.returncode == 0, (again.stdout + again.stderr)[-6000:]
        sid2 = again.stdout.splitlines()[0].strip()
        assert sid2 != sid and "[fastemb train] resumed from checkpoint at step" in again.stdout
        report = json.loads((run / "report.json").read_text())
        assert report["resumes"] >= 1
        assert (run / "model" / "model.safetensors").is_file()
