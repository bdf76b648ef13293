"""``fastemb submit`` without a cluster: what would be submitted (entrypoint, runtime_env, metadata),
the refusals (bad spec, spec outside the working_dir, secrets), and connection errors."""
from __future__ import annotations

import json
import shlex
import shutil
import socket
from pathlib import Path

import pytest
import yaml

from fastemb.cli import main
from fastemb.spec import SpecError, load_spec
from fastemb.submit import SubmitError, build_submission

ROOT = Path(__file__).resolve().parents[1]
SPEC = str(ROOT / "jobs" / "contrastive.yaml")
RUNTIME_ENV = str(ROOT / "runtime_env.yaml")


@pytest.fixture(autouse=True)
def _own_token(tmp_path, monkeypatch):
    """A private token file, never the user's ~/.ray/auth_token."""
    tok = tmp_path / "auth_token"
    tok.write_text("f" * 64)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tok))
    for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(k, raising=False)
    return "f" * 64


def test_entrypoint_runs_the_same_spec_on_the_cluster(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    sub = build_submission("jobs/contrastive.yaml", ["name=demo", "train.lr=3e-5"], "runtime_env.yaml")
    args = shlex.split(sub["entrypoint"])
    assert args[:5] == ["python", "-m", "fastemb.cli", "train", "jobs/contrastive.yaml"]
    assert args[5:7] == ["name=demo", "train.lr=3e-5"]
    assert args[-1] == "ray.address=auto"
    # The relative storage_path ('runs') is pinned to the submitter's absolute path, with a note.
    assert f"storage_path={ROOT / 'runs'}" in args
    assert any("storage_path" in n and "every node" in n for n in sub["notes"])
    # The spec the cluster will run equals the spec validated here.
    here = load_spec(SPEC, args[5:])
    assert here.name == "demo" and here.train.lr == 3e-5 and here.storage_path == str(ROOT / "runs")
    assert here.ray.address == "auto"
    assert sub["submission_id"].startswith("fastemb-train-demo-")
    assert sub["metadata"] == {"fastemb_job": "train", "fastemb_spec": "jobs/contrastive.yaml", "fastemb_name": "demo"}


def test_runtime_env_merges_worker_env(monkeypatch):
    from fastemb.ray_env import worker_env
    from fastemb.submit import MACHINE_LOCAL_ENV

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")  # this machine's accelerator: not sent, the job's spec decides
    sub = build_submission(SPEC, ["train.cpus_per_worker=3"], RUNTIME_ENV, {"EXTRA": "1"})
    env = sub["runtime_env"]
    assert env["working_dir"] == str(ROOT)
    assert env["excludes"] == yaml.safe_load(Path(RUNTIME_ENV).read_text())["excludes"]
    ev = env["env_vars"]
    for k, v in worker_env(3).items():
        if k not in MACHINE_LOCAL_ENV:  # a path or the accelerator of this machine; the cluster's nodes set their own
            assert ev[k] == v, k
    assert not MACHINE_LOCAL_ENV & set(ev) and {"TORCH_EXTENSIONS_DIR", "DS_ACCELERATOR"} <= MACHINE_LOCAL_ENV
    assert ev["OMP_NUM_THREADS"] == "3" and ev["EXTRA"] == "1" and ev["PYTHONUNBUFFERED"] == "1"
    assert ev["RAY_OVERRIDE_JOB_RUNTIME_ENV"] == "1"
    assert env["worker_process_setup_hook"] == "fastemb.logs.configure"  # fastemb's logging in every worker
    # A GPU job: the spec picks CUDA on the cluster (fastemb/accelerator.py); --env DS_ACCELERATOR still forces one.
    gpu = build_submission(SPEC, ["train.use_gpu=true"], RUNTIME_ENV)
    assert "DS_ACCELERATOR" not in gpu["runtime_env"]["env_vars"]
    assert gpu["resources"]["train"]["accelerator"] == "cuda" and gpu["resources"]["train"]["backend"] == "nccl"
    forced = build_submission(SPEC, ["train.use_gpu=true"], RUNTIME_ENV, {"DS_ACCELERATOR": "cpu"})
    assert forced["runtime_env"]["env_vars"]["DS_ACCELERATOR"] == "cpu"
    assert forced["resources"]["train"]["accelerator"] == "cpu"


def test_local_data_paths_become_absolute(tmp_path, monkeypatch, tiny_eval):
    monkeypatch.chdir(tmp_path)
    shared = tmp_path / "shared"
    shutil.copytree(tiny_eval, shared / "evalset")  # outside the working_dir, but on the shared storage_path
    sub = build_submission(SPEC, ["data.eval=shared/evalset", f"storage_path={shared}"], RUNTIME_ENV)
    args = shlex.split(sub["entrypoint"])
    assert f"data.eval={shared / 'evalset'}" in args
    assert [a for a in args if a.startswith("storage_path=")] == [f"storage_path={shared}"]  # absolute: kept
    assert "data.train=wordnet" not in args  # the shipped set is not a path


def test_refusals(tmp_path, monkeypatch, _own_token):
    # An invalid spec fails before anything is uploaded, naming the field.
    with pytest.raises(SpecError, match="train.lr"):
        build_submission(SPEC, ["train.lr=7"], RUNTIME_ENV)
    # A spec outside the working_dir would not be uploaded.
    outside = tmp_path / "job.yaml"
    shutil.copy(SPEC, outside)
    with pytest.raises(SubmitError, match="outside the working_dir"):
        build_submission(str(outside), [], RUNTIME_ENV)
    # Secrets are refused: by name, and the cluster token by value anywhere in the job.
    with pytest.raises(SubmitError, match="HF_TOKEN.*secrets"):
        build_submission(SPEC, [], RUNTIME_ENV, {"HF_TOKEN": "hf_abc"})
    with pytest.raises(SubmitError, match="AWS_SECRET_ACCESS_KEY"):
        build_submission(SPEC, [], RUNTIME_ENV, {"AWS_SECRET_ACCESS_KEY": "x"})
    with pytest.raises(SubmitError, match="auth token"):
        build_submission(SPEC, [f"data.train={_own_token}"], RUNTIME_ENV)
    # ... but TOKENIZERS_PARALLELISM is not a secret.
    build_submission(SPEC, [], RUNTIME_ENV, {"TOKENIZERS_PARALLELISM": "true"})
    # A runtime env without a local working_dir cannot carry the spec.
    rt = tmp_path / "rt.yaml"
    rt.write_text("working_dir: s3://bucket/pkg.zip\n")
    with pytest.raises(SubmitError, match="local working_dir"):
        build_submission(SPEC, [], str(rt))


def test_cli_dry_run_prints_no_secret(capsys, _own_token):
    rc = main(["submit", SPEC, "name=dry", "--runtime-env", RUNTIME_ENV, "--dry-run"])
    out, err = capsys.readouterr()
    assert rc == 0
    sub = json.loads(out)
    assert sub["entrypoint"].startswith("python -m fastemb.cli train jobs/contrastive.yaml name=dry")
    assert _own_token not in out + err


def test_cli_errors_exit_2(capsys, monkeypatch):
    assert main(["submit", SPEC, "--runtime-env", RUNTIME_ENV]) == 2
    assert "no cluster address" in capsys.readouterr().err
    assert main(["submit", SPEC, "train.lr=7", "--runtime-env", RUNTIME_ENV, "--address", "http://x:1"]) == 2
    assert "train.lr" in capsys.readouterr().err
    assert main(["submit", SPEC, "--runtime-env", "nope.yaml", "--address", "http://x:1"]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    # Nothing listens on this port: a clear connection error, not a traceback.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["jobs", "list", "--address", f"127.0.0.1:{port}"]) == 2
    assert f"http://127.0.0.1:{port}" in capsys.readouterr().err
    assert main(["jobs", "stop", "--address", f"127.0.0.1:{port}"]) == 2


def _workdir(tmp_path: Path, spec: dict, excludes: list[str], gitignore: str = "") -> Path:
    """A working_dir of its own: runtime env, .gitignore and a job spec inside it."""
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "rt.yaml").write_text(yaml.safe_dump({"working_dir": ".", "excludes": excludes}))
    (wd / ".gitignore").write_text(gitignore)
    (wd / "job.yaml").write_text(yaml.safe_dump(spec))
    return wd


def _decisions(sub: dict) -> dict[str, dict]:
    return {p["field"]: p for p in sub["paths"]}


def test_inputs_are_uploaded_pinned_on_shared_storage_or_refused(tmp_path, monkeypatch):
    wd = _workdir(tmp_path, {"job": "train", "storage_path": "../runs", "distill": {"kl": {}}},
                  excludes=["/big/", "*.safetensors"], gitignore="runs/\n")
    for f in ("data/pairs.jsonl", "big/evalset/test_queries.parquet", "runs/tuned/model/config.json",
              "models/m/config.json", "models/m/model.safetensors"):
        (wd / f).parent.mkdir(parents=True, exist_ok=True)
        (wd / f).write_text("x")
    monkeypatch.chdir(wd / "data")  # relative paths are relative to the current folder, not the working_dir
    job, rt = str(wd / "job.yaml"), str(wd / "rt.yaml")

    sub = build_submission(job, ["data.train=pairs.jsonl", "distill.teacher=../runs/tuned/model"], rt)
    d = _decisions(sub)
    # inside the working_dir and uploaded: passed relative to the working_dir (where the job runs)
    assert d["data.train"]["action"] == "uploaded" and d["data.train"]["result"] == "data/pairs.jsonl"
    # excluded by .gitignore, but under storage_path: pinned, and said how
    assert d["distill.teacher"]["action"] == "pinned"
    assert d["distill.teacher"]["result"] == str(wd / "runs" / "tuned" / "model")
    assert "pinned on the shared storage_path" in d["distill.teacher"]["why"] and ".gitignore" in \
        d["distill.teacher"]["why"]
    args = shlex.split(sub["entrypoint"])
    assert "data.train=data/pairs.jsonl" in args and f"distill.teacher={wd / 'runs/tuned/model'}" in args
    assert d["storage_path"]["action"] == "pinned" and d["data.eval"]["action"] == "kept"  # 'wordnet'

    # excluded by the runtime env and not on shared storage: refused, naming the field, why and the fixes
    with pytest.raises(SubmitError) as err:
        build_submission(job, ["data.eval=../big/evalset"], rt)
    msg = str(err.value)
    assert "data.eval '../big/evalset'" in msg and "rt.yaml excludes ('/big/')" in msg
    assert "storage_path" in msg and "--shared" in msg and "s3://" in msg and "un-exclude" in msg
    # a folder one of whose files is excluded would arrive incomplete: refused too
    with pytest.raises(SubmitError, match=r"model\.base '\.\./models/m'.*model\.safetensors is excluded"):
        build_submission(job, ["model.base=../models/m"], rt)
    # outside the working_dir: refused, unless under a folder declared --shared
    outside = tmp_path / "elsewhere" / "teacher"
    outside.mkdir(parents=True)
    with pytest.raises(SubmitError, match="distill.teacher .*outside the working_dir"):
        build_submission(job, [f"distill.teacher={outside}"], rt)
    sub = build_submission(job, [f"distill.teacher={outside}"], rt, shared=[str(tmp_path / "elsewhere")])
    assert _decisions(sub)["distill.teacher"]["action"] == "pinned"


def test_list_items_and_nested_specs_get_decisions(tmp_path, monkeypatch):
    """tasks.N.data (a list item) and a demo stage's nested fields are handled like any other path field."""
    wd = _workdir(tmp_path, {"job": "train", "tasks": [{"name": "a", "data": "wordnet"},
                                                       {"name": "b", "data": "wordnet"}]}, excludes=[])
    (wd / "b.jsonl").write_text("x")
    monkeypatch.chdir(wd)
    sub = build_submission(str(wd / "job.yaml"), ["tasks.1.data=b.jsonl"], str(wd / "rt.yaml"))
    d = _decisions(sub)
    assert d["tasks.0.data"]["action"] == "kept" and d["tasks.1.data"]["action"] == "uploaded"
    assert "tasks.1.data=b.jsonl" in shlex.split(sub["entrypoint"])


def test_dry_run_of_the_distill_teacher_under_runs(capsys, tmp_path, monkeypatch, _own_token):
    """The issue's example: `fastemb submit --dry-run jobs/distill.yaml distill.teacher=runs/x/model` with the
    shipped runtime_env.yaml and .gitignore (runs/ excluded by both; storage_path: runs)."""
    wd = tmp_path / "repo"
    (wd / "jobs").mkdir(parents=True)
    for f in ("runtime_env.yaml", ".gitignore", "jobs/distill.yaml"):
        shutil.copy(ROOT / f, wd / f)
    monkeypatch.chdir(wd)
    argv = ["submit", "--dry-run", "jobs/distill.yaml", "distill.teacher=runs/x/model"]
    assert main(argv) == 0  # not there yet: may be an alias, left as it is
    assert "distill.teacher = 'runs/x/model': kept" in capsys.readouterr().err
    (wd / "runs" / "x" / "model").mkdir(parents=True)
    assert main(argv) == 0
    out, err = capsys.readouterr()
    line = next(x for x in err.splitlines() if "distill.teacher" in x)
    assert f"pinned → {wd / 'runs/x/model'}" in line and "runtime_env.yaml excludes ('/runs/')" in line
    assert "pinned on the shared storage_path" in line
    assert f"distill.teacher={wd / 'runs/x/model'}" in shlex.split(json.loads(out)["entrypoint"])
    # somewhere no node can see: refused, naming the field
    assert main(["submit", "--dry-run", "jobs/distill.yaml", f"distill.teacher={tmp_path}"]) == 2
    assert "distill.teacher" in capsys.readouterr().err
