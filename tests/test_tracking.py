"""Experiment tracking with MLflow (fastemb/tracking/): a job's run in a local store, a store that is down or fails
(a warning, never the job), rank 0's background metrics; then one tiny training job against a real `mlflow server`
on a loopback port, checked through MlflowClient, with its model card, report and spec copy; and the same job run
again from its `job.yaml` against the stopped server."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from fastemb.model.card import RANKING_METRICS
from fastemb.ray_env import free_port
from fastemb.spec import load_spec, parse_spec
from fastemb.tracking.run import RUN_FILE, Tracker
from fastemb.tracking.sink import MetricSink
from fastemb.tracking.target import (Target, client_env, local_store, metric_key, resolve_target,
                                     seed_local_store)

client_env()  # no telemetry, short retries: before mlflow is imported here
from mlflow.tracking import MlflowClient  # noqa: E402


def test_names_and_targets(tmp_path):
    assert metric_key("dev_ndcg@10_compressed") == "dev_ndcg_at_10_compressed"
    assert metric_key("PQ48 + refine fp16/recall@10") == "PQ48 _ refine fp16/recall_at_10"
    spec = parse_spec({"job": "train", "storage_path": str(tmp_path), "name": "n", "tracking": {"mlflow": "on"}})
    t = resolve_target(spec.tracking, spec.run_dir, spec.name)
    assert t == Target(f"sqlite:///{tmp_path / 'n' / 'mlflow.db'}", "n", (tmp_path / "n" / "mlartifacts").as_uri())
    assert resolve_target(parse_spec({"job": "train"}).tracking, tmp_path, "x") is None


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Target:
    """A local store: a copy of the empty store fastemb keeps in its cache (made once: MLflow's schema migrations take
    seconds)."""
    target = local_store(tmp_path_factory.mktemp("store"), "exp")
    seed_local_store(target)
    MlflowClient(target.uri).search_experiments()
    return target


def test_a_new_local_store_is_a_copy_of_an_empty_one(store, tmp_path):
    """(MLflow's own creation of a store takes 5-15 s here; the copy, a few milliseconds.)"""
    import mlflow

    from fastemb.model.teachers import cache_root

    template = MlflowClient(f"sqlite:///{cache_root() / 'mlflow' / f'empty-{mlflow.__version__}.db'}")
    run = Tracker.start(local_store(tmp_path, "fresh"), "job")
    run.log_metrics({"loss": 1.0}, 1)
    run.finish()
    client = MlflowClient(run.target.uri)
    assert client.get_run(run.run_id).data.metrics == {"loss": 1.0}
    # MLflow's default experiment, made with the template, came with the copy
    assert client.get_experiment("0").creation_time == template.get_experiment("0").creation_time


def test_a_job_run_in_a_local_store_and_its_rerun(store, tmp_path, caplog):
    target = store
    parent = Tracker.start(target, "parent")
    with parent.as_parent():
        run = Tracker.start(target, "job", run_dir=tmp_path / "run", tags={"fastemb.job": "train"})
    run.log_params({"train": {"lr": 5e-5, "seed": 1}, "model": {"base": "m", "new_tokens": None}})
    run.log_metrics({"dev_ndcg@10": 0.5, "note": "not a number", "flag": True}, step=3)
    run.log_history([{"step": 1, "loss": 2.0, "time": 100.0}, {"step": 2, "loss": 1.5, "time": 101.0}])
    run.log_record({"code": {"git_commit": "abc", "dirty": False}, "seeds": {"train.seed": 1}})
    (tmp_path / "report.json").write_text("{}")
    run.log_artifacts([tmp_path / "report.json", tmp_path / "missing.png"])
    run.finish()
    client = MlflowClient(target.uri)
    got = client.get_run(run.run_id)
    assert got.data.params == {"train.lr": "5e-05", "train.seed": "1", "model.base": "m", "model.new_tokens": "null"}
    assert got.data.metrics == {"dev_ndcg_at_10": 0.5, "loss": 1.5}
    assert [(m.step, m.value, m.timestamp) for m in client.get_metric_history(run.run_id, "loss")] == \
        [(1, 2.0, 100_000), (2, 1.5, 101_000)]
    assert got.data.tags["mlflow.parentRunId"] == parent.run_id and got.data.tags["mlflow.source.git.commit"] == "abc"
    assert got.info.status == "FINISHED" and got.info.run_name == "job"
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["report.json"]
    assert Path(got.info.artifact_uri.removeprefix("file://"), "report.json").is_file()  # under the store's folder
    again = Tracker.start(target, "job", run_dir=tmp_path / "run")  # a rerun of the job goes on with its run
    assert again.run_id == run.run_id and again.resumed
    assert json.loads((tmp_path / "run" / RUN_FILE).read_text())["run_id"] == run.run_id
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_tune_trials_are_child_runs_with_every_report_and_early_stops_marked(store, caplog):
    """Ray Tune's MLflowLoggerCallback as fastemb runs it, fed real (stub) Tune trials as Tune's driver would."""
    from ray.tune.experiment import Trial

    from fastemb.tracking.tune import STATUS_TAG, TrialRuns
    from fastemb.tune.tuner import METRIC

    search = Tracker.start(store, "search")
    callback = TrialRuns(store, search.run_id, [METRIC, "step"])
    callback.setup()
    trials = {name: Trial("run_trial", config={"lr": 1e-4, "pq_bytes": 48}, stub=True, trial_id=name)
              for name in ("done", "stopped", "broken")}
    for name, trial in trials.items():
        callback.log_trial_start(trial)
        for it in (1, 2):
            result = {METRIC: 0.25 * it, "step": 10 * it, "training_iteration": it, "note": "x",
                      "finished": name == "done" and it == 2}
            trial.update_last_result(result)
            callback.log_trial_result(it, trial, result)
    callback.log_trial_end(trials["done"])
    callback.log_trial_end(trials["stopped"])  # ASHA stopped it: Tune ends it as not failed
    callback.log_trial_end(trials["broken"], failed=True)
    client = MlflowClient(store.uri)
    runs = client.search_runs([client.get_experiment_by_name(store.experiment).experiment_id],
                              f"tags.`mlflow.parentRunId` = '{search.run_id}'")
    got = {r.data.tags["trial_name"]: (r.info.status, r.data.tags[STATUS_TAG]) for r in runs}
    assert got == {"run_trial_done": ("FINISHED", "FINISHED"), "run_trial_stopped": ("KILLED", "STOPPED EARLY"),
                   "run_trial_broken": ("FAILED", "ERROR")}
    for r in runs:
        assert r.data.params == {"lr": "0.0001", "pq_bytes": "48"} and set(r.data.metrics) == {metric_key(METRIC), "step"}
        assert [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, metric_key(METRIC))] == \
            [(1, 0.25), (2, 0.5)]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    down = TrialRuns(Target(f"http://127.0.0.1:{free_port()}", "exp"), search.run_id, [METRIC])
    down.setup()  # a store that is down: one warning, then the callback is off and the search goes on
    down.log_trial_start(trials["done"])
    down.log_trial_end(trials["done"])
    assert down.off and caplog.text.count("the search goes on without tracking its trials") == 1


def test_a_store_that_is_down_or_fails_costs_a_warning(tmp_path, caplog):
    down = Target(f"http://127.0.0.1:{free_port()}", "exp")
    t0 = time.time()
    tracker = Tracker.start(down, "job", run_dir=tmp_path)
    (tmp_path / "report.json").write_text("{}")
    with tracker.running():  # a tracker that is off takes every call and does nothing
        tracker.log_params({"a": 1})
        tracker.log_metrics({"loss": 1.0}, 1)
        tracker.log_record({"code": {"git_commit": "abc"}})
        tracker.log_artifacts([tmp_path / "report.json", tmp_path])
    assert not tracker.enabled and tracker.info() is None and time.time() - t0 < 10
    assert "unreachable" in caplog.text and not (tmp_path / RUN_FILE).exists()
    caplog.clear()
    # a server that stops answering after the run opened: the next call fails once, then the tracker is off
    failing = Tracker(down, MlflowClient(down.uri), run_id="0123")
    failing.log_metrics({"loss": 1.0}, 1)
    failing.log_metrics({"loss": 0.5}, 2)
    assert not failing.enabled and caplog.text.count("the job goes on without tracking") == 1
    # rank 0's sink: logging never waits; the failure is one warning; closing waits a bounded time
    sink = MetricSink(down.uri, "0123")
    t0 = time.time()
    for step in range(1, 501):
        sink.log({"loss": 1.0 / step, "step": step, "time": time.time()}, step)
    queued_s = time.time() - t0
    sink.close(timeout_s=20)
    assert queued_s < 0.5 and sink.failed and sink.written == 0
    assert "training goes on without them" in caplog.text


# ------------------------------------------------------------------------------------------------ a real server

@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` (mlflow-skinny, SQLite store, proxied artifacts) on a free loopback port, starting (the run
    waits for it to answer: meanwhile the session's Ray starts)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
           "DO_NOT_TRACK": "true"}
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                             "--artifacts-destination", str(root / "artifacts")],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = {"uri": f"http://127.0.0.1:{port}", "proc": proc, "log": root / "server.log"}
    yield server
    if proc.poll() is None:
        proc.terminate()
        proc.wait(30)
    log.close()


def _wait_until_up(server: dict, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(server["uri"] + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        assert server["proc"].poll() is None, f"mlflow server exited: {server['log'].read_text()[-2000:]}"
        assert time.time() < deadline, "mlflow server did not start"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def tracked_run(mlflow_server, ray_local, tmp_path_factory, tiny_eval, tiny_general, tiny_model):
    """One tiny training job (1 worker, 2 steps, a dev evaluation at the end) tracked by the server (the metrics are
    rank 0's: a second worker would add a process start, not a check)."""
    from fastemb.train.job import run_train

    spec = parse_spec({"name": "tracked", "storage_path": str(tmp_path_factory.mktemp("tracked")),
                       "model": {"base": tiny_model, "max_length": 32}, "data": {"max_pairs": 64, "eval": tiny_eval},
                       "general": {"eval": tiny_general},  # the card's general figures, on a small real set
                       "train": {"num_workers": 1, "micro_batch_size": 32, "log_every": 1, "eval_every": 2,
                                 "checkpoint_every": 1000},
                       "tracking": {"mlflow": mlflow_server["uri"], "experiment": "fastemb-tests"}})
    _wait_until_up(mlflow_server)
    return spec, run_train(spec)


def test_a_training_run_on_a_real_mlflow_server(tracked_run, mlflow_server):
    spec, report = tracked_run
    client = MlflowClient(mlflow_server["uri"])
    experiment = client.get_experiment_by_name("fastemb-tests")
    runs = client.search_runs([experiment.experiment_id], "attributes.run_name = 'tracked'")
    assert len(runs) == 1 and runs[0].info.run_id == report["mlflow"]["run_id"]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["fastemb.job"] == "train"
    assert run.data.params["train.num_workers"] == "1" and run.data.params["model.max_length"] == "32"
    assert run.data.params["tracking.mlflow"] == mlflow_server["uri"]
    # rank 0's live metrics, at every progress step and dev evaluation
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "pairs_per_s")] == [1, 2]
    dev = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "dev_ndcg_at_10")}
    assert dev == {h["step"]: h["dev_ndcg@10"] for h in report["history"] if "dev_ndcg@10" in h} and list(dev) == [2]
    assert run.data.metrics["test_ndcg_at_10"] == pytest.approx(report["tuned"]["ndcg@10"])
    assert run.data.metrics["base_test_ndcg_at_10"] == pytest.approx(report["base"]["ndcg@10"])
    # the reproducible record
    record = report["record"]
    assert run.data.tags["mlflow.source.git.commit"] == record["code"]["git_commit"]
    assert run.data.tags["fastemb.data_fingerprint"] == record["data_fingerprint"]
    assert json.loads(run.data.tags["fastemb.versions"])["deepspeed"] == record["versions"]["deepspeed"]
    assert record["seeds"] == {"train.seed": 42}
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.json", "training_curve.png", "job.yaml", "model"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/README.md"]


def test_the_exported_model_has_a_card_that_matches_the_report(tracked_run):
    from huggingface_hub import ModelCard
    from sentence_transformers import SentenceTransformer

    from fastemb.model.encoder import Encoder

    spec, report = tracked_run
    model_dir = Path(report["model_dir"])
    card = ModelCard.load(model_dir / "README.md")
    assert card.data.library_name == "sentence-transformers" and card.data.pipeline_tag == "sentence-similarity"
    assert card.data.base_model == Path(spec.model.base).name  # a local folder without a card of its own: its name
    assert {"fastemb", "loss:InfoNCE", "dataset_size:64"} <= set(card.data.tags)
    assert card.data.data_fingerprint == report["record"]["data_fingerprint"]
    length = report["lengths"]["export"]  # every test figure is measured at the exported model's length
    sets = {"in-domain": (report["tuned"], report["base"])}
    if report.get("general"):
        sets["general"] = (report["general"]["tuned"], report["general"]["base"])
    for label, (tuned, base) in sets.items():
        index = {r.metric_type: r for r in card.data.eval_results if r.dataset_name.endswith(f"({label})")}
        want = {f"cosine_{k}": tuned[k] for k in RANKING_METRICS} | {f"base_cosine_{k}": base[k] for k in RANKING_METRICS}
        assert {k: r.metric_value for k, r in index.items()} == want, label  # the same figures as report.json
        assert {(r.dataset_split, r.metric_args["max_seq_length"]) for r in index.values()} == {("test", length)}
    assert {r.dataset_type for r in card.data.eval_results if r.dataset_name.endswith("(in-domain)")} == \
        {Path(spec.data.eval).name}
    for words in ("ZeRO stage 2", "1 Ray Train worker(s)", "fp32", "2 optimizer steps", "InfoNCE (1)",
                  "SentenceTransformer(", "fastemb serve", "## Limitations", f"evaluated at {length}", report["record"]["code"]
                  ["git_commit"] or "not a git checkout", "The full resolved job spec"):
        assert words in card.text, words
    texts = ["a member of the genus Canis", "relating to the stars"]
    st = SentenceTransformer(str(model_dir), device="cpu").encode(texts)
    assert np.abs(st - Encoder.load(str(model_dir)).encode(texts)).max() <= 1e-5
    assert load_spec(spec.run_dir) == spec and report["card"] == str(model_dir / "README.md")


def test_the_same_job_again_from_its_spec_against_a_stopped_server(tracked_run, mlflow_server, capsys):
    from fastemb.cli import main

    spec, first = tracked_run
    mlflow_server["proc"].terminate()
    mlflow_server["proc"].wait(30)
    assert main(["train", str(spec.run_dir / "job.yaml")]) == 0  # its spec still names the (now stopped) server
    out = capsys.readouterr()
    assert f"MLflow tracking server {mlflow_server['uri']} is unreachable" in out.err
    assert json.loads(out.out)["tuned_ndcg@10"] == pytest.approx(first["tuned"]["ndcg@10"])
    again = json.loads((spec.run_dir / "report.json").read_text())
    assert again["mlflow"] is None and again["spec"] == first["spec"]
