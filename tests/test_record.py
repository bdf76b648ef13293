"""The reproducible record (fastemb/record.py), the run folder's copy of its spec, and the ``tracking`` section."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from fastemb.spec import JOB_TYPES, RunJob, SpecError, load_spec, parse_spec
from fastemb.record import keep_spec, library_versions, reproducible_record, seeds

ROOT = Path(__file__).resolve().parents[1]


def test_the_record_names_the_commit_versions_seeds_and_data(tmp_path):
    spec = parse_spec({"job": "train", "storage_path": str(tmp_path), "name": "r", "train": {"seed": 7},
                       "negatives_pool": {"refresh_every": 5, "seed": 3}, "loss": {"hard_negatives": 1}})
    record = reproducible_record(spec, "abcd")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert record["code"]["git_commit"] == head and isinstance(record["code"]["dirty"], bool)
    versions = record["versions"]
    for library in ("torch", "ray", "deepspeed", "transformers", "faiss"):
        assert versions[library], library
    pins = dict(re.findall(r'"(torch|ray)(?:\[[^]]*\])?==([^"]+)"', (ROOT / "pyproject.toml").read_text()))
    assert versions["torch"].split("+")[0] == pins["torch"] and versions["ray"] == pins["ray"]  # the pinned ones
    assert record["seeds"] == {"negatives_pool.seed": 3, "train.seed": 7}
    assert record["data_fingerprint"] == "abcd" and record["spec_file"] == str(tmp_path / "r" / "job.yaml")
    assert seeds({"tasks": [{"seed": 1}], "x": {"mine_seed": 2}}) == {"tasks.0.seed": 1, "x.mine_seed": 2}
    assert library_versions()["python"]


def test_every_run_job_keeps_its_spec_and_runs_again_from_it(tmp_path):
    for job, job_type in JOB_TYPES.items():
        if not issubclass(job_type, RunJob):
            continue
        required = {"merge": {"models": [{"path": "all-MiniLM-L6-v2"}, {"path": "all-MiniLM-L6-v2"}]}}
        spec = parse_spec({"job": job, "storage_path": str(tmp_path), "name": f"{job}-run",
                           "tracking": {"mlflow": "on"}, **required.get(job, {})})
        path = keep_spec(spec)
        assert path == spec.run_dir / "job.yaml"
        same = parse_spec(spec.model_dump(mode="json"))  # (the demo's default stages get absolute paths validated)
        assert load_spec(path) == same, job              # the file, as written
        assert load_spec(spec.run_dir) == same, job      # the run folder itself
        assert load_spec(path, ["name=again"]).name == "again"


def test_a_run_folder_without_a_spec_is_refused_clearly(tmp_path):
    (tmp_path / "old-run").mkdir()
    with pytest.raises(SpecError, match="folder without a job spec.*job.yaml"):
        load_spec(tmp_path / "old-run")
    from fastemb.cli import main

    assert main(["train", str(tmp_path / "old-run")]) == 2


def test_tracking_switches_folders_and_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    on = [parse_spec({"job": "index"}, [o]).tracking.mlflow for o in
          ("tracking.mlflow=on", "tracking.mlflow=true", "tracking.mlflow='on'", "tracking.mlflow=local")]
    assert on == [True] * 4
    off = [parse_spec({"job": "train"}, [o]).tracking.mlflow for o in
           ("tracking.mlflow=off", "tracking.mlflow=false", "tracking.mlflow=null")]
    assert off == [False] * 3 and not parse_spec({"job": "train"}).tracking.enabled
    assert parse_spec({"job": "tune"}, ["tracking.mlflow=stores/ml"]).tracking.mlflow == str(tmp_path / "stores/ml")
    uri = "http://127.0.0.1:5000"
    assert parse_spec({"job": "demo"}, [f"tracking.mlflow={uri}"]).tracking.mlflow == uri
    with pytest.raises(SpecError, match="tracking.experiment"):
        parse_spec({"job": "mine", "tracking": {"experiment": ""}})
