"""The cluster definitions parse and carry what Ray / KubeRay need, with fastemb's security defaults:
token auth on, no Ray port exposed publicly, shared storage mounted everywhere, pinned Ray version."""
from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
RAY_PORTS = {6379, 8265, 10001}


def _load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kind(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _check_ray_cluster_spec(spec: dict, where: str) -> None:
    """Fields KubeRay's RayClusterSpec needs, plus fastemb's rules."""
    assert spec["rayVersion"] == ray.__version__, f"{where}: rayVersion must match the Ray fastemb pins"
    assert spec["authOptions"]["mode"] == "token", f"{where}: token auth must be on"
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{where}: head service must not be public"
    containers = head["template"]["spec"]["containers"]
    assert containers and containers[0]["image"] and containers[0]["name"]
    assert {p["containerPort"] for p in containers[0]["ports"]} >= RAY_PORTS
    assert spec["workerGroupSpecs"], f"{where}: no worker groups"
    for g in spec["workerGroupSpecs"]:
        assert g["groupName"] and isinstance(g["rayStartParams"], dict)
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], f"{where}: {g['groupName']} replicas"
        c = g["template"]["spec"]["containers"][0]
        assert c["image"] and c["name"] and c["resources"]["limits"]
    # Every Ray pod mounts the same shared volume for storage_path.
    for pod in [head["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]:
        mounts = {m["mountPath"] for c in pod["spec"]["containers"] for m in c.get("volumeMounts", [])}
        assert "/mnt/fastemb" in mounts, f"{where}: a pod lacks the shared volume"


def test_raycluster_manifest():
    docs = _load_all(CLUSTER / "kuberay" / "raycluster.yaml")
    rc = _kind(docs, "RayCluster")
    assert rc["apiVersion"] == "ray.io/v1" and rc["metadata"]["name"]
    spec = rc["spec"]
    _check_ray_cluster_spec(spec, "raycluster.yaml")
    assert spec["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] and groups["gpu"]["maxReplicas"] > groups["gpu"]["minReplicas"]
    assert "nvidia.com/gpu" not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    pvc = _kind(docs, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    policy = _kind(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"]["ray.io/cluster"] == rc["metadata"]["name"]
    assert policy["spec"]["ingress"][0]["from"], "network policy must restrict ingress to the cluster's pods"


def _cpu(quantity: str | int) -> float:
    """A Kubernetes CPU quantity ("8", "500m") in CPUs."""
    q = str(quantity)
    return int(q[:-1]) / 1000 if q.endswith("m") else float(q)


def _group_offers(group: dict) -> dict[str, float]:
    """What one pod of a KubeRay worker group offers Ray: its container's CPU and GPU limits."""
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    return {"CPU": _cpu(limits["cpu"]), "GPU": float(limits.get("nvidia.com/gpu", 0))}


def _fits(ask: dict[str, float], offer: dict[str, float]) -> bool:
    return all(offer.get(k, 0) >= v for k, v in ask.items())


def _check_rayjob(path: Path):
    """A RayJob running the shipped train spec: the entrypoint's spec is valid, every training worker's request fits a
    pod of its cluster and the cluster has enough of them; returns the spec the job runs."""
    from fastemb import logs
    from fastemb.accelerator import stage_requests
    from fastemb.spec import load_spec

    job = _kind(_load_all(path), "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    args = shlex.split(spec["entrypoint"])
    assert args[:4] == ["python", "-m", "fastemb.cli", "train"] and args[4].endswith("jobs/contrastive.yaml")
    assert "ray.address=auto" in args and any(a.startswith("storage_path=/mnt/fastemb") for a in args)
    train = load_spec(ROOT / "jobs" / "contrastive.yaml", [a for a in args[5:]])  # a valid fastemb spec
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert "DS_ACCELERATOR" not in env["env_vars"], "the spec picks the accelerator (fastemb/accelerator.py)"
    assert env["worker_process_setup_hook"] == logs.SETUP_HOOK  # job-level: Ray runs it in every worker of the job
    assert spec["submissionMode"] in {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0
    _check_ray_cluster_spec(spec["rayClusterSpec"], path.name)
    ask = stage_requests(train)["train"]
    fitting = sum(g["replicas"] for g in spec["rayClusterSpec"]["workerGroupSpecs"]
                  if _fits(ask["per_worker"], _group_offers(g)))
    assert fitting >= ask["workers"], f"{path.name}: {ask['workers']} workers need {ask['per_worker']} each"
    return train


def test_rayjob_manifest_runs_the_train_spec():
    assert not _check_rayjob(CLUSTER / "kuberay" / "rayjob.yaml").train.use_gpu


def test_gpu_rayjob_runs_the_same_spec_on_gpus():
    from fastemb.accelerator import stage_requests

    train = _check_rayjob(CLUSTER / "kuberay" / "rayjob-gpu.yaml")
    ask = stage_requests(train)["train"]
    assert train.train.use_gpu and ask["per_worker"]["GPU"] >= 1
    assert (ask["accelerator"], ask["backend"]) == ("cuda", "nccl")


def _gpu_stage_requests() -> dict[str, dict[str, float]]:
    """One resource request per GPU stage, from the shipped specs with their GPU switch on."""
    from fastemb.accelerator import stage_requests
    from fastemb.spec import load_spec, parse_spec

    jobs = ROOT / "jobs"
    return {"train workers": stage_requests(load_spec(jobs / "contrastive.yaml", ["train.use_gpu=true"]))
            ["train"]["per_worker"],
            "encoder actors": stage_requests(load_spec(jobs / "index.yaml", ["embed.num_gpus=1"]))
            ["embed"]["per_actor"],
            "serve replicas": stage_requests(parse_spec({"job": "serve", "replica": {"num_gpus": 1, "num_cpus": 2}}))
            ["replica"]["per_replica"]}


@pytest.mark.parametrize("path, kind, spec_key", [("raycluster.yaml", "RayCluster", "spec"),
                                                  ("rayservice.yaml", "RayService", "rayClusterConfig")])
def test_kuberay_gpu_groups_fit_the_gpu_stages(path, kind, spec_key):
    """Each GPU stage's request (GPU > 0) fits one pod of an autoscaled GPU worker group; CPU groups offer no GPU."""
    cluster = _kind(_load_all(CLUSTER / "kuberay" / path), kind)["spec"]
    groups = cluster[spec_key]["workerGroupSpecs"] if spec_key != "spec" else cluster["workerGroupSpecs"]
    gpu = [g for g in groups if _group_offers(g)["GPU"] > 0]
    assert gpu and all(g["maxReplicas"] > g["minReplicas"] for g in gpu), f"{path}: no autoscaled GPU group"
    for stage, ask in _gpu_stage_requests().items():
        assert ask.get("GPU", 0) > 0, stage
        assert any(_fits(ask, _group_offers(g)) for g in gpu), f"{path}: no GPU group fits the {stage}' {ask}"
    for text in (CLUSTER / "kuberay").glob("*.yaml"):  # the spec picks the accelerator: no pod or job pins one
        assert "DS_ACCELERATOR" not in yaml.safe_dump(_load_all(text)), text.name


def test_rayservice_manifest_serve_config():
    svc = _kind(_load_all(CLUSTER / "kuberay" / "rayservice.yaml"), "RayService")
    assert svc["apiVersion"] == "ray.io/v1"
    spec = svc["spec"]
    serve = yaml.safe_load(spec["serveConfigV2"])  # a string holding Serve's own config
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(serve) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(serve)
    app = serve["applications"][0]
    assert app["import_path"] == "fastemb.serve.deployments:build_app"
    assert app["route_prefix"] == "/"
    from fastemb.spec import ServeJob

    job = ServeJob.model_validate(app["args"]["spec"])  # the args are a valid fastemb serve job
    from fastemb.serve.job import serve_config

    # the deployments are the ones fastemb builds for these args (a stale manifest would fail to deploy)
    expected = serve_config(job)["applications"][0]["deployments"]
    assert [d["name"] for d in app["deployments"]] == [d["name"] for d in expected]
    _check_ray_cluster_spec(spec["rayClusterConfig"], "rayservice.yaml")
    # every node's Serve proxy runs fastemb's middleware (JSON errors, a bounded wait when no replica runs)
    rc = spec["rayClusterConfig"]
    groups = [rc["headGroupSpec"], *rc["workerGroupSpecs"]]
    for g in groups:
        env = {e["name"]: e.get("value") for c in g["template"]["spec"]["containers"] for e in c.get("env", [])}
        module, _, name = env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"].partition(":")
        assert callable(getattr(importlib.import_module(module), name))
    policy = _kind(_load_all(CLUSTER / "kuberay" / "rayservice.yaml"), "NetworkPolicy")
    labels = policy["spec"]["podSelector"]["matchLabels"]
    assert all(labels.items() <= g["template"]["metadata"]["labels"].items() for g in groups)


def test_launcher_yaml():
    cfg = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    for key in ("cluster_name", "max_workers", "idle_timeout_minutes", "provider", "auth",
                "available_node_types", "head_node_type", "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in cfg, key
    assert cfg["provider"]["type"] == "aws" and cfg["provider"]["region"]
    assert cfg["provider"].get("use_internal_ips") is True, "nodes must not need public IPs"
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    workers = {n: t for n, t in types.items() if n != cfg["head_node_type"]}
    for name, t in types.items():
        assert "node_config" in t and "resources" in t and t["node_config"]["InstanceType"], name
        assert t["min_workers"] <= t["max_workers"], name
    autoscaled = [n for n, t in workers.items() if t["max_workers"] > t["min_workers"]]
    assert len(autoscaled) >= 2, "CPU and GPU worker types should both autoscale"
    gpu = [n for n, t in workers.items() if re.match(r"^(g|p)\d", t["node_config"]["InstanceType"])]
    cpu = [n for n, t in workers.items() if n not in gpu]
    assert gpu and cpu, "needs a CPU and a GPU worker type"
    assert sum(t["max_workers"] for t in workers.values()) >= cfg["max_workers"] > 0
    # The GPU types declare their GPUs (the autoscaler plans with them) and each GPU stage's request fits one of them.
    assert all(workers[n]["resources"].get("GPU", 0) >= 1 for n in gpu)
    assert all(not workers[n]["resources"].get("GPU") for n in cpu)
    for stage, ask in _gpu_stage_requests().items():
        assert any(_fits(ask, workers[n]["resources"]) for n in gpu), f"no GPU node type fits the {stage}' {ask}"
    # Ray's own schema for launcher configs (an unknown or misplaced key fails here).
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(yaml.safe_load((CLUSTER / "aws.yaml").read_text())))

    # Token auth: the token file reaches every node, every ray start runs with RAY_AUTH_MODE=token.
    assert any(k.endswith(".ray/auth_token") for k in cfg["file_mounts"])
    starts = [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in starts)
    head = next(c for c in cfg["head_start_ray_commands"] if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    # No Ray port opened to the world: no 0.0.0.0/0 anywhere, no public dashboard host.
    text = yaml.safe_dump(cfg)  # the config itself, not its comments
    assert "0.0.0.0/0" not in text and "--dashboard-host=0.0.0.0" not in text
    for t in types.values():
        assert "SecurityGroupIds" in t["node_config"], "every node type names its (private) security group"
    # The token itself is never inlined.
    assert "RAY_AUTH_TOKEN=" not in text


def test_runtime_env_yaml():
    env = yaml.safe_load((ROOT / "runtime_env.yaml").read_text())
    assert env["working_dir"] == "."
    ex = env["excludes"]
    for needed in (".git", ".venv", "/runs/", "/data/", "/indexes/", "*.index"):
        assert needed in ex, needed
    assert "data/" not in ex and "*.parquet" not in ex, "would drop fastemb/data or the shipped WordNet set"
    assert "pip" not in env and "conda" not in env, "packages come from the image / venv, see the comments"
    assert all(isinstance(v, str) for v in env["env_vars"].values()), "env var values must be strings"


def test_runtime_env_package_contents(tmp_path):
    """What Ray would upload for working_dir: fastemb's code and shipped data, no venv, runs or indexes."""
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    env = yaml.safe_load((ROOT / "runtime_env.yaml").read_text())
    zpath = tmp_path / "pkg.zip"
    # Without .gitignore (RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1 does that): the excludes alone must do.
    create_package(str(ROOT), zpath, include_gitignore=False, include_parent_dir=False, excludes=env["excludes"])
    names = set(zipfile.ZipFile(zpath).namelist())
    for must in ("fastemb/cli.py", "fastemb/submit.py", "fastemb/data/pairs.py", "jobs/contrastive.yaml",
                 "runtime_env.yaml", "fastemb/datasets/wordnet/train.parquet"):
        assert must in names, must
    for n in names:
        assert not n.startswith((".venv/", ".git/", "runs/", "data/", "indexes/")), n
        assert not n.endswith((".index", ".pyc")), n
    assert zpath.stat().st_size < 100 * 2**20


@pytest.mark.parametrize("path", ["cluster/aws.yaml", "cluster/kuberay/raycluster.yaml",
                                  "cluster/kuberay/rayjob.yaml", "cluster/kuberay/rayjob-gpu.yaml",
                                  "cluster/kuberay/rayservice.yaml", "runtime_env.yaml"])
def test_no_secret_values_committed(path):
    text = (ROOT / path).read_text()
    assert not re.search(r"\b[0-9a-f]{64}\b", text), "looks like a token"
    assert not re.search(r"(?i)(token|secret|password)\s*:\s*['\"]?[A-Za-z0-9+/]{16,}", text)
