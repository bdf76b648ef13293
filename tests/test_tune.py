"""Ray Tune over the real training job (tiny budget): trials report the compressed objective, the
winner respects the compression floor, and a search whose driver is killed resumes without rerunning
finished trials."""
from __future__ import annotations

import json
import os
import re
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


def test_asha_judges_no_trial_before_its_warmup_ends():
    """The grace period is the first dev evaluation at or after the warm-up of the batch size with the longest one
    (in evaluations); an explicit grace period below it is refused, naming the field."""
    from fastemb.spec import SpecError
    from fastemb.tune.tuner import asha_grace, first_report_after_warmup

    spec = parse_spec({"job": "tune", "train": {"warmup_ratio": 0.3, "eval_every": 2, "micro_batch_size": 32,
                                                "num_workers": 1}, "space": {"micro_batch_size": [16, 32, 64]}})
    plans = first_report_after_warmup(spec, 2000)  # batch 16: 125 steps, warm-up 37: evaluation 19 (step 38)
    assert {b: p["warmup_steps"] for b, p in plans.items()} == {16: 37, 32: 18, 64: 9}
    for p in plans.values():
        first = p["first_report"]
        assert p["eval_steps"][first - 1] >= p["warmup_steps"] > p["eval_steps"][first - 2]
    assert asha_grace(spec, 2000) == (19, 63)  # max_t: batch 16's 63 evaluations
    with pytest.raises(SpecError, match=r"tune\.grace_period: 4 would judge trials before their learning-rate "
                                        r"warm-up ends \(batch 16: warm-up 37 of 125 steps.*use at least 19"):
        asha_grace(spec.model_copy(update={"tune": spec.tune.model_copy(update={"grace_period": 4})}), 2000)
    default_evals = parse_spec({"job": "tune", "train": {"num_workers": 1}})  # 4 evaluations, warm-up 10 %
    assert asha_grace(default_evals, 2000)[0] == 1


def test_search_axes_make_the_trial_job_and_its_compression():
    """Sampled values land in the trial's training job (AXES); a Matryoshka dimension trains the nested dimensions
    and truncates the objective's vectors before PQ; the default trial is the spec's own configuration."""
    from fastemb.tune.trial import nested_dims, trial_compression, trial_spec
    from fastemb.tune.tuner import default_point, param_space

    spec = parse_spec({"job": "tune", "train": {"cache_mini_batch": 32, "micro_batch_size": 32},
                       "space": {"micro_batch_size": [32, 256], "hard_negatives": [0, 3], "matryoshka_dim": [None, 64],
                                 "pq_bytes": [32, 96]}})
    assert default_point(spec) == {"temperature": 0.05, "lr": 5e-5, "micro_batch_size": 32, "hard_negatives": 0,
                                   "matryoshka_dim": None, "pq_bytes": 96}
    assert list(param_space(spec)) == ["temperature", "lr", "micro_batch_size", "hard_negatives", "matryoshka_dim",
                                       "pq_bytes"]
    params = {"temperature": 0.02, "lr": 1e-4, "micro_batch_size": 256, "hard_negatives": 3, "matryoshka_dim": 64,
              "pq_bytes": 32}
    trial = trial_spec(spec, params, "abc", width=384)
    assert (trial.loss.temperature, trial.train.lr, trial.train.micro_batch_size, trial.loss.hard_negatives) == \
        (0.02, 1e-4, 256, 3)
    assert trial.train.cached and trial.loss.matryoshka_dims == [64, 128, 256, 384] == nested_dims(64, 384)
    assert trial_compression(spec, params) == {"pq_bytes": 32, "opq": True, "method": "matryoshka", "dim": 64}
    untruncated = trial_spec(spec, default_point(spec), "def", width=384)
    assert untruncated.loss.matryoshka_dims is None and not untruncated.train.cached
    assert trial_compression(spec, default_point(spec)) == {"pq_bytes": 96, "opq": True}


@pytest.mark.parametrize("space, train, words", [
    ({"matryoshka_dim": [128]}, {}, "lies outside space.matryoshka_dim"),
    ({"micro_batch_size": [32, 16]}, {"cache_mini_batch": 32}, "space.micro_batch_size: 16 is smaller than "
                                                               "train.cache_mini_batch 32"),
    ({"hard_negatives": [1, 3]}, {}, "loss.hard_negatives: 0 is the default trial"),
    ({"hard_negatives": [0, 65]}, {}, "space.hard_negatives"),
])
def test_bad_search_spaces_name_the_field(space, train, words):
    from fastemb.spec import SpecError

    with pytest.raises(SpecError, match=re.escape(words)):
        parse_spec({"job": "tune", "space": space, "train": train})


def test_matryoshka_axis_wider_than_the_model_is_refused():
    from fastemb.spec import SpecError
    from fastemb.tune.tuner import check_search

    check_search(parse_spec({"job": "tune", "space": {"matryoshka_dim": [None, 384]}}))
    with pytest.raises(SpecError, match=r"space\.matryoshka_dim: 512 is larger than the model's width 384"):
        check_search(parse_spec({"job": "tune", "space": {"matryoshka_dim": [None, 512]}}))


def test_test_split_verdict_gives_the_default_its_better_setting(tmp_path, tiny_eval, minilm_path):
    """Winner and default are the same (base) model: at the winner's 128-d truncation the default is also scored at
    full width in at most the winner's bytes, which does better for a model not trained to be truncated, so the
    gain reported is negative (the conservative figure)."""
    from fastemb.tune.holdout import winner_vs_default

    spec = parse_spec({"job": "tune", "storage_path": str(tmp_path), "model": {"base": minilm_path, "max_length": 16},
                       "data": {"eval": tiny_eval, "test_queries": 20}, "space": {"matryoshka_dim": [None, 128]}})
    winner = {"trial_id": "w", "model_dir": minilm_path, "matryoshka_dim": 128, "pq_bytes": 64}
    out = winner_vs_default(spec, winner, {"trial_id": "d", "model_dir": minilm_path})
    assert out["winner"]["setting"] == {"pq_bytes": 64, "opq": True, "method": "matryoshka", "dim": 128}
    assert out["winner"]["bytes_per_vector"] == 64 and out["winner"]["compression_x"] == 24
    by = out["default"]["by_setting"]
    assert by["winner's setting"]["ndcg@10"] == pytest.approx(out["winner"]["ndcg@10"])  # the same model
    assert by["full width"]["bytes_per_vector"] <= 64
    assert out["default"]["ndcg@10"] == max(r["ndcg@10"] for r in by.values())
    assert out["gain_ndcg@10"] == pytest.approx(out["winner"]["ndcg@10"] - out["default"]["ndcg@10"])
    assert out["default"]["setting_name"] == "full width" and out["gain_ndcg@10"] < 0


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


def _tune_cmd(storage: Path, tiny_eval: str, base: str) -> list[str]:
    # no scheduler: every trial runs to its end, so "finished" is the only right outcome for each of them
    return [sys.executable, "-m", "fastemb.cli", "tune", str(ROOT / "jobs" / "tune.yaml"), "name=t",
            f"storage_path={storage}", f"model.base={base}", "data.max_pairs=64", f"data.eval={tiny_eval}",
            "tune.num_samples=2",
            "tune.scheduler=none", "tune.max_concurrent_trials=1", "train.num_workers=1", "train.cpus_per_worker=1",
            "train.eval_every=2", f"tune.registry={storage / 'registry'}",
            "space.micro_batch_size=[16]", "train.micro_batch_size=16", "ray.num_cpus=2"]


def _trial_dirs(exp: Path) -> set[str]:
    return {p.parent.name for p in exp.glob("*/params.json")}


@pytest.mark.faults
def test_killed_tune_driver_resumes_without_rerunning_finished_trials(own_ray, tmp_path, tiny_eval, tiny_model):
    storage = tmp_path / "runs"
    exp = storage / "t"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(_tune_cmd(storage, tiny_eval, tiny_model), stdout=log, stderr=subprocess.STDOUT, env=env,
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

    second = subprocess.run(_tune_cmd(storage, tiny_eval, tiny_model), capture_output=True, text=True, env=env,
                            timeout=900)
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
