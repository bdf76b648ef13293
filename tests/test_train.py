"""Distributed training end to end on real Ray Train + DeepSpeed (2 workers, ZeRO-2, gloo), small data, through two
faults of one run (a module fixture):

1. a training worker is SIGKILLed mid-run: Ray restarts the worker group and the loop resumes from the last
   checkpoint;
2. after the restarted group has written a checkpoint of its own, the driver side dies (its Train controller and
   workers SIGKILLed, its local Ray shut down); running the same job again (a new driver: a fresh Ray, the same name
   and storage_path) resumes it from that checkpoint, runs to the end and exports a model that sentence-transformers
   loads with the same embeddings; running the finished job once more returns its result.

The run trains at 32 tokens per text and exports at the base's 256, merged with the base (``export.merge``), with
a general-domain set in its report: one run checks the faithful export, the general metrics and the merge too.
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


def small_spec(tmp_path, tiny_eval, base, name, general: str | None = None, export: dict | None = None, **train):
    """24 steps of 2 workers x 16 pairs: with the one-layer base a step takes about a second, and the driver-side
    kill must land on a checkpoint before the last one (with 12 steps the run had finished by then)."""
    cfg = {"micro_batch_size": 16, "num_workers": 2, "zero_stage": 2, "checkpoint_every": 2, "log_every": 1,
           "eval_every": 1000, "lr": 5e-5, **train}
    return parse_spec({"name": name, "storage_path": str(tmp_path),
                       "model": {"base": base, "max_length": 32},
                       "data": {"max_pairs": 768, "eval": tiny_eval},
                       "general": {"eval": general} if general else None, "export": export or {},
                       "train": cfg})


def _live_actors(class_name: str) -> dict[str, int]:
    """Actor id -> pid of the session Ray's live actors of a class (earlier tests' Train actors may still linger:
    a test takes the ones that appeared after it started its run)."""
    import ray
    from ray.util.state import list_actors

    actors = list_actors(address=ray.get_runtime_context().gcs_address,
                         filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")])
    return {a.actor_id: a.pid for a in actors if a.pid}


def _wait_for(pred, what: str, thread: threading.Thread, timeout_s: float = 600) -> None:
    deadline = time.time() + timeout_s
    while not pred():
        assert thread.is_alive(), f"the run ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def faulted_run(ray_local, tmp_path_factory, tiny_eval, tiny_general, tiny_model):
    """The run through both faults (trained at 32 tokens per text, exported merged with the base, scored on a general
    set too); returns what each test checks. The driver side dies as a crashed driver node would: its Train
    controller and workers are SIGKILLed and its (local) Ray goes down with them."""
    import ray

    from fastemb.ray_env import init_ray

    tmp_path = tmp_path_factory.mktemp("faults")
    spec = small_spec(tmp_path, tiny_eval, tiny_model, "faults", general=tiny_general,
                      export={"merge": {"grid": [0.5, 1.0]}}, max_failures=2)
    run_dir = tmp_path / "faults"
    checkpoints = lambda: {p.name for p in run_dir.glob("checkpoint_*") if p.is_dir()}  # noqa: E731
    workers_before, controllers_before = _live_actors("RayTrainWorker"), _live_actors("TrainController")
    outcome: dict = {}

    def first_run():
        try:
            outcome["report"] = run_train(spec)
        except BaseException as err:  # noqa: BLE001  (whatever fit() raises once its Ray is gone)
            outcome["error"] = err

    thread = threading.Thread(target=first_run, daemon=True)
    thread.start()
    # 1. A checkpoint counts once every rank has reported it; the second one appearing means the first did.
    _wait_for(lambda: len(checkpoints()) >= 2, "two checkpoints", thread)
    workers = [pid for actor, pid in _live_actors("RayTrainWorker").items() if actor not in workers_before]
    assert workers, "no live training worker of this run found"
    os.kill(workers[-1], signal.SIGKILL)
    at_worker_kill = checkpoints()
    # 2. Once the restarted group has a checkpoint of its own (committed: the next one has appeared), the driver side
    #    dies: its controller, its workers, its Ray.
    _wait_for(lambda: len(checkpoints() - at_worker_kill) >= 2, "two checkpoints after the worker restart", thread)
    controllers = [pid for actor, pid in _live_actors("TrainController").items() if actor not in controllers_before]
    assert len(controllers) == 1, f"expected this run's Train controller alone, found {controllers}"
    for pid in controllers + [pid for a, pid in _live_actors("RayTrainWorker").items() if a not in workers_before]:
        os.kill(pid, signal.SIGKILL)
    ray.shutdown()
    thread.join(timeout=300)
    assert not thread.is_alive(), "the first driver did not return after its Ray went down"
    # Re-run as a new driver would: a fresh Ray, the same name and storage_path.
    init_ray(num_cpus=2)
    rerun = run_train(spec)
    again = run_train(spec)  # the finished job once more
    return {"first": outcome, "killed_worker": workers[-1], "rerun": rerun, "again": again, "run_dir": run_dir,
            "spec": spec, "base": tiny_model}


@pytest.mark.faults
def test_sigkilled_worker_resumes_from_checkpoint_and_exports(faulted_run):
    with pytest.raises(ProcessLookupError):
        os.kill(faulted_run["killed_worker"], 0)                 # the worker really died
    report = faulted_run["rerun"]
    resumed_at = [h["step"] for h in report["history"] if h.get("event") == "resumed"]
    assert resumed_at and min(resumed_at) >= 2, "the worker group restarted from scratch instead of a checkpoint"
    assert report["plan"]["total_steps"] == 24
    assert max(h["step"] for h in report["history"] if "loss" in h) == 24
    model_dir = Path(report["model_dir"])
    texts = ["a member of the genus Canis", "dog, domestic dog", "relating to the stars"]
    ours = Encoder.load(str(model_dir)).encode(texts)
    st = SentenceTransformer(str(model_dir), device="cpu").encode(texts)
    assert np.abs(ours - st).max() <= 1e-5
    base = Encoder.load(faulted_run["base"]).encode(texts)
    assert np.abs(ours - base).max() > 1e-4, "the exported model is the untrained base"
    saved = json.loads((faulted_run["run_dir"] / "report.json").read_text())
    assert {"base", "tuned", "delta"} <= set(saved) and (faulted_run["run_dir"] / "training_curve.png").stat().st_size > 0


@pytest.mark.faults
def test_rerunning_a_job_with_the_same_name_resumes_it(faulted_run):
    """The driver side died mid-run; running the same job again resumed it."""
    assert "error" in faulted_run["first"], "the first run should have failed when its driver side died"
    report = faulted_run["rerun"]
    resumed_at = [h["step"] for h in report["history"] if h.get("event") == "resumed"]
    # the worker restart's resume, then the rerun's, from the checkpoint the restarted group wrote
    assert len(resumed_at) >= 2 and resumed_at[-1] > resumed_at[0], resumed_at
    assert max(h["step"] for h in report["history"] if "loss" in h) == report["plan"]["total_steps"]
    # Running the finished job once more returns its result instead of failing to resume.
    again = faulted_run["again"]
    assert again["plan"] == report["plan"] and Path(again["model_dir"]).is_dir()
    assert abs(again["tuned"]["ndcg@10"] - report["tuned"]["ndcg@10"]) < 1e-9


def test_the_export_runs_at_the_bases_length_and_the_report_measures_it_there(faulted_run, tiny_eval, tiny_general):
    """Trained at 32 tokens per text, the exported model (merged or not) runs at the base's 256; the report's base,
    tuned and general test metrics are those of the models as they run, and how the model was merged is recorded."""
    import torch

    from fastemb.data.eval_sets import load_eval_set
    from fastemb.eval.retrieval import evaluate
    from fastemb.merge.select import choose_weight
    from fastemb.train.job import cli_summary

    report, run_dir = faulted_run["rerun"], faulted_run["run_dir"]
    assert report["lengths"]["train"] == 32 and report["lengths"]["export"] == report["lengths"]["base"] == 256
    for folder in ("model", "model_unmerged"):
        assert SentenceTransformer(str(run_dir / folder), device="cpu").max_seq_length == 256
    exported, base = Encoder.load(str(run_dir / "model")), Encoder.load(faulted_run["base"])
    assert exported.max_length == base.max_length == 256
    for name, eval_dir, section in (("in-domain", tiny_eval, report), ("general", tiny_general, report["general"])):
        test = load_eval_set(eval_dir, "test")
        for model, key in ((base, "base"), (exported, "tuned")):
            assert section[key]["ndcg@10"] == pytest.approx(evaluate(model, test)["ndcg@10"], abs=1e-6), (name, key)
    assert report["general"]["eval"] == tiny_general and report["general"]["gate"]["tolerance"] == 0.005
    merge = report["merge"]
    assert merge["weight"] == choose_weight(merge["grid"], merge["base_dev"], 0.005)["weight"]
    assert {r["weight"] for r in merge["grid"]} == {0.5, 1.0} and merge["max_seq_length"] == 256
    w, unmerged = merge["weight"], Encoder.load(str(run_dir / "model_unmerged"))
    parts = (unmerged.transformer.state_dict(), base.transformer.state_dict())
    for name, value in exported.transformer.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, w * parts[0][name] + (1 - w) * parts[1][name], atol=1e-6), name
    assert faulted_run["again"]["merge"]["weight"] == w  # the finished job, run again, merges the same way
    assert cli_summary(report)["max_seq_length"] == 256 and cli_summary(report)["merge_weight"] == w
