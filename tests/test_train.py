"""Distributed training end to end on real Ray Train + DeepSpeed (2 workers, ZeRO-2, gloo), small data.

One test SIGKILLs a training worker mid-run: Ray restarts the worker group, the loop resumes from the
last checkpoint, and the run exports a model that sentence-transformers loads with the same embeddings.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from fastemb.model.encoder import Encoder
from fastemb.spec import parse_spec
from fastemb.train.job import run_train

ROOT = Path(__file__).resolve().parents[1]


def small_spec(tmp_path, tiny_eval, name, **train):
    cfg = {"micro_batch_size": 16, "num_workers": 2, "zero_stage": 2, "checkpoint_every": 3, "log_every": 1,
           "eval_every": 1000, "lr": 5e-5, **train}
    return parse_spec({"name": name, "storage_path": str(tmp_path),
                       "model": {"max_length": 32},
                       "data": {"max_pairs": 384, "eval": tiny_eval},
                       "train": cfg})


def _live_actors(class_name: str) -> dict[str, int]:
    """Actor id -> pid of the session Ray's live actors of a class (earlier tests' Train actors may still linger:
    a test takes the ones that appeared after it started its run)."""
    import ray
    from ray.util.state import list_actors

    actors = list_actors(address=ray.get_runtime_context().gcs_address,
                         filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")])
    return {a.actor_id: a.pid for a in actors if a.pid}


@pytest.mark.faults
def test_sigkilled_worker_resumes_from_checkpoint_and_exports(ray_local, tmp_path, tiny_eval):
    spec = small_spec(tmp_path, tiny_eval, "killed", max_failures=2)
    earlier = _live_actors("RayTrainWorker")
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(report=run_train(spec)), daemon=True)
    thread.start()
    run_dir = tmp_path / "killed"
    deadline = time.time() + 600
    # A checkpoint counts once every rank has reported it; the second one appearing means the first did.
    while len(list(run_dir.glob("checkpoint_*"))) < 2 and time.time() < deadline and thread.is_alive():
        time.sleep(0.2)
    assert len(list(run_dir.glob("checkpoint_*"))) >= 2, "no checkpoint was written"
    pids = [pid for actor, pid in _live_actors("RayTrainWorker").items() if actor not in earlier]
    assert pids, "no live training worker of this run found"
    os.kill(pids[-1], signal.SIGKILL)
    thread.join(timeout=900)
    report = out["report"]
    assert report["resumes"] >= 1
    resumed_at = [h["step"] for h in report["history"] if h.get("event") == "resumed"]
    assert min(resumed_at) >= 3, "resumed from scratch instead of a checkpoint"
    assert report["plan"]["total_steps"] == 12
    assert max(h["step"] for h in report["history"] if "loss" in h) == 12
    model_dir = Path(report["model_dir"])
    texts = ["a member of the genus Canis", "dog, domestic dog", "relating to the stars"]
    ours = Encoder.load(str(model_dir)).encode(texts)
    st = SentenceTransformer(str(model_dir), device="cpu").encode(texts)
    assert np.abs(ours - st).max() <= 1e-5
    base = Encoder.load("all-MiniLM-L6-v2").encode(texts)
    assert np.abs(ours - base).max() > 1e-4, "the exported model is the untrained base"
    saved = json.loads((run_dir / "report.json").read_text())
    assert {"base", "tuned", "delta"} <= set(saved) and (run_dir / "training_curve.png").stat().st_size > 0


@pytest.mark.faults
def test_rerunning_a_job_with_the_same_name_resumes_it(ray_local, tmp_path, tiny_eval):
    """The driver side dies mid-run (its Train controller is killed); running the same job again resumes."""
    import ray

    from fastemb.train.trainer import TrainError

    spec = small_spec(tmp_path, tiny_eval, "rerun", max_failures=0)
    earlier = _live_actors("TrainController")
    errors: list = []

    def first_run():
        try:
            run_train(spec)
        except TrainError as err:
            errors.append(err)

    thread = threading.Thread(target=first_run, daemon=True)
    thread.start()
    run_dir = tmp_path / "rerun"
    deadline = time.time() + 600
    while len(list(run_dir.glob("checkpoint_*"))) < 2 and time.time() < deadline and thread.is_alive():
        time.sleep(0.2)
    controllers = [pid for actor, pid in _live_actors("TrainController").items() if actor not in earlier]
    assert len(controllers) == 1, f"expected this run's Train controller alone, found {controllers}"
    os.kill(controllers[0], signal.SIGKILL)
    thread.join(timeout=600)
    assert errors, "the first run should have failed when its controller died"

    # Re-run as a new driver would: a fresh Ray, the same name and storage_path.
    from fastemb.ray_env import init_ray

    ray.shutdown()
    init_ray(num_cpus=2)
    report = run_train(spec)
    resumed = [h["step"] for h in report["history"] if h.get("event") == "resumed"]
    assert resumed and min(resumed) >= 3
    assert max(h["step"] for h in report["history"] if "loss" in h) == report["plan"]["total_steps"]
    # Running the finished job once more returns its result instead of failing to resume.
    again = run_train(spec)
    assert again["plan"] == report["plan"] and Path(again["model_dir"]).is_dir()
    assert abs(again["tuned"]["ndcg@10"] - report["tuned"]["ndcg@10"]) < 1e-9
