"""Ray Tune over the real training job (tiny budget): trials report the compressed objective, the
winner respects the compression floor, and a search whose driver is killed resumes without rerunning
finished trials."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastemb.plots import pareto_front
from fastemb.spec import parse_spec
from fastemb.tune.results import pick_winner
from fastemb.tune.tuner import METRIC, concurrent_trials

ROOT = Path(__file__).resolve().parents[1]


def test_winner_respects_the_compression_floor_and_pareto_front():
    rows = [{METRIC: 0.9, "compression_x": 8.0}, {METRIC: 0.7, "compression_x": 16.0},
            {METRIC: 0.8, "compression_x": 32.0}, {METRIC: None, "compression_x": 64.0}]
    assert pick_winner(rows, 16)[METRIC] == 0.8
    assert pick_winner(rows, 100) is None
    assert pareto_front([(96, 0.5), (24, 0.4), (48, 0.38), (48, 0.45)]) == [(24, 0.4), (48, 0.45), (96, 0.5)]


def test_concurrency_is_derived_from_cluster_resources():
    spec = parse_spec({"job": "tune", "train": {"num_workers": 2, "cpus_per_worker": 1}, "tune": {"num_samples": 8}})
    assert concurrent_trials(spec, 2) == 1
    assert concurrent_trials(spec, 16) == 8
    assert concurrent_trials(spec.model_copy(update={"tune": spec.tune.model_copy(
        update={"max_concurrent_trials": 3})}), 16) == 3
    gpu = parse_spec({"job": "tune", "train": {"num_workers": 2, "cpus_per_worker": 1, "use_gpu": True,
                                               "gpus_per_worker": 0.5}, "tune": {"num_samples": 8}})
    assert concurrent_trials(gpu, 16, 2) == 2  # 1 GPU per trial: the GPUs, not the CPUs, bound it
    assert concurrent_trials(gpu, 16, 0) == 1


def _finished_trials(exp: Path) -> dict[str, int]:
    """Trial folder → number of results, for the trials that the search's saved state records as finished: what a
    restored search must not run again. (A trial's result.json alone is not enough: its last result can be written
    before Tune has saved the trial as ended, and Tune leaves ``done`` false there.)"""
    from ray.tune import ExperimentAnalysis

    try:
        trials = ExperimentAnalysis(str(exp)).trials
    except (OSError, ValueError):  # no experiment state saved yet
        return {}
    out = {}
    for t in trials:
        results = Path(t.path or exp, "result.json")
        if t.status == "TERMINATED" and (t.last_result or {}).get("finished") and results.exists():
            out[Path(t.path).name] = sum(1 for line in results.read_text().splitlines() if line.strip())
    return out


def _tune_cmd(storage: Path, tiny_eval: str) -> list[str]:
    # no scheduler: every trial runs to its end, so "finished" is the only right outcome for each of them
    return [sys.executable, "-m", "fastemb.cli", "tune", str(ROOT / "jobs" / "tune.yaml"), "name=t",
            f"storage_path={storage}", "data.max_pairs=96", f"data.eval={tiny_eval}", "tune.num_samples=2",
            "tune.scheduler=none", "tune.max_concurrent_trials=1", "train.num_workers=1", "train.cpus_per_worker=1",
            "train.eval_every=2", f"tune.registry={storage / 'registry'}",
            "space.micro_batch_size=[16]", "train.micro_batch_size=16", "ray.num_cpus=2"]


def _trial_dirs(exp: Path) -> set[str]:
    return {p.parent.name for p in exp.glob("*/params.json")}


@pytest.mark.faults
def test_killed_tune_driver_resumes_without_rerunning_finished_trials(own_ray, tmp_path, tiny_eval):
    storage = tmp_path / "runs"
    exp = storage / "t"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(_tune_cmd(storage, tiny_eval), stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    deadline = time.time() + 600
    while not _finished_trials(exp) and time.time() < deadline and proc.poll() is None:
        time.sleep(1)
    before = _finished_trials(exp)
    assert before, (tmp_path / "first.log").read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)        # the driver and the Ray it started
    proc.wait()
    subprocess.run(["pkill", "-9", "-f", f"session_.*{proc.pid}"], check=False)
    unfinished = _trial_dirs(exp) - set(before)
    assert len(before) < 2, "the driver was killed after every trial had finished: nothing left to resume"

    second = subprocess.run(_tune_cmd(storage, tiny_eval), capture_output=True, text=True, env=env, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "[fastemb tune] resuming the search in" in second.stderr  # a log line: stderr
    ended = [line for line in second.stderr.splitlines() if line.startswith("[fastemb tune] trial ")]
    assert ended and all(" finished at step " in line for line in ended), ended  # one line per ended trial
    assert "Trial status:" not in second.stdout + second.stderr  # Tune's status tables: FASTEMB_LOG_LEVEL=DEBUG only
    after = _finished_trials(exp)
    for trial, n_results in before.items():
        assert after[trial] == n_results, f"finished trial {trial} was rerun"
    for trial in unfinished:                    # started before the kill: resumed and finished after the restore
        assert trial in after, f"trial {trial}, unfinished at the kill, did not finish after the restore"
    assert len(after) == 2, f"not every trial finished: {sorted(after)}"
    summary = json.loads((exp / "tune_summary.json").read_text())
    assert [r["status"] for r in summary["trials"]] == ["FINISHED", "FINISHED"], summary["trials"]
    assert all(r[METRIC] is not None for r in summary["trials"])
    assert (exp / "tune_trials.png").stat().st_size > 0
    from fastemb.registry import Registry

    reg = Registry(str(storage / "registry"))
    assert reg.versions() == ["v0001"] and reg.show("v0001")["config"]["trial"] == summary["winner"]["trial_id"]
