"""The multi-node tier on one real local cluster (cluster/local_cluster.py: a head and 3 worker nodes, token auth),
started once for the module:

- the cluster itself: the Jobs API and the GCS refuse requests without the right token, the dashboard listens on
  loopback only, no listener answers another host without the token except the metrics exporters that
  cluster/README.md documents (with their firewall rules), and stop ends every process it started;
- an index build submitted with `fastemb submit` survives an encoder actor SIGKILLed while its unit is unfinished
  (held by embed.py's test hook): Ray restarts the actor, and the index loses and duplicates nothing;
- last (it takes a node away), one submitted training job through two faults: stopped (`fastemb jobs stop`) after
  its first checkpoint, it resumes when the same spec is submitted again; that resubmission then survives the crash
  of a worker node hosting one of its training workers (Ray Train restarts the group, which resumes from the last
  checkpoint) and runs to SUCCEEDED. The resubmission is also the end-to-end acceptance run: `fastemb submit
  jobs/contrastive.yaml ... --follow` to SUCCEEDED, the exported model on the shared storage, the job visible through
  `fastemb jobs`, and the token nowhere in its output or job info."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import faiss
import pyarrow.parquet as pq
import pytest

from cluster_helpers import ROOT, api_get, group_alive, job_status, live_actors, local_cluster, run_script, state_api
from index_helpers import HOLD_ENV, N_ROWS, HeldActorKiller, write_fault_corpus
from listeners import listening, machine_address, open_without_auth, process_groups

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("own_ray")]
WORKERS = 3  # one more than a 2-worker training job needs, so it can lose a node


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> str:
    """The local cluster's nodes run on this machine, so the test's temporary folder is storage they all mount:
    `fastemb submit --shared` lets the jobs read their inputs (tiny eval set, corpus) from it."""
    return str(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(workers=WORKERS, head_cpus=1, worker_cpus=1) as c:
        yield c
    for n in c["state"]["nodes"]:
        assert not group_alive(n["pgid"]), f"{n['name']} still running after stop"


def _fastemb(*args: str, env: dict, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastemb.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


# ------------------------------------------------------------------------------------------- the cluster itself
def _request(url: str, token: str | None = None, data: bytes | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_nodes_up_with_token_auth(cluster):
    st = run_script("status", "--dir", str(cluster["dir"] / "c"), env=cluster["env"])
    assert st.returncode == 0, st.stdout + st.stderr
    info = json.loads(st.stdout)
    assert info["alive_nodes"] == 1 + WORKERS and all(info["processes_alive"].values())
    assert cluster["token"] not in cluster["start"].stdout + cluster["start"].stderr + st.stdout
    env = run_script("env", "--dir", str(cluster["dir"] / "c"), env=cluster["env"]).stdout
    assert "RAY_AUTH_MODE=token" in env and "RAY_AUTH_TOKEN_PATH=" in env and cluster["token"] not in env


def test_jobs_api_refuses_requests_without_the_token(cluster):
    url = cluster["state"]["dashboard"] + "/api/jobs/"
    assert _request(url)[0] == 401
    assert _request(url, "0" * 64)[0] == 403
    assert _request(url, cluster["token"])[0] == 200
    body = json.dumps({"entrypoint": "echo pwned", "submission_id": "fastemb-unauthenticated"}).encode()
    assert _request(url, None, body)[0] == 401
    assert _request(url, "0" * 64, body)[0] == 403
    status, jobs = _request(url, cluster["token"])
    assert status == 200 and "fastemb-unauthenticated" not in jobs


def test_dashboard_listens_on_loopback_only(cluster):
    import psutil
    import ray._private.services as services

    port = int(cluster["state"]["dashboard"].rsplit(":", 1)[1])
    bound = {c.laddr.ip for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    assert bound and all(ip.startswith("127.") for ip in bound), f"dashboard port {port} bound to {bound}"
    ip = services.node_ip_address_from_perspective()
    if not ip.startswith("127."):  # this machine's own non-loopback address (where it has one): nothing answers
        with socket.socket() as s:
            s.settimeout(5)
            assert s.connect_ex((ip, port)) != 0, f"dashboard reachable on {ip}:{port}"


def test_gcs_refuses_a_client_with_a_wrong_token(cluster):
    # two connection attempts, not Ray's default twenty (one a second): the refusal is the same on the first
    env = {**cluster["env"], "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64, "RAY_NUM_REDIS_GET_RETRIES": "2"}
    code = ("import ray\n"
            f"ray.init(address={cluster['state']['address']!r}, logging_level='ERROR')\n"
            "print('CONNECTED')\n")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode != 0 and "CONNECTED" not in p.stdout
    assert "InvalidAuthToken" in p.stderr or "Authentication" in p.stderr, p.stderr[-2000:]


PROMETHEUS_SAMPLE = re.compile(r'^[A-Za-z_:][A-Za-z0-9_:]*(\{.*\})? \S+( \d+)?$')  # name{labels} value [time]


def _metrics_export_ports(cluster) -> set[int]:
    """Each node's Prometheus exporter port (its metrics agent's ``--metrics-export-port``), from the dashboard."""
    status, body = api_get(cluster["state"]["dashboard"], "/nodes?view=summary", cluster["token"])
    assert status == 200, body[:500]
    return {int(n["raylet"]["metricsExportPort"]) for n in json.loads(body)["data"]["summary"]}


def test_nothing_answers_other_hosts_without_the_token(cluster):
    """Every listener of the cluster's nodes that another host reaches refuses it without the token, except the
    nodes' Prometheus exporters: Ray 2.60 binds them to all interfaces on a node with a routable address, and
    cluster/README.md's 'Open ports' documents them with the firewall rules. Those answer nothing but metrics."""
    found = listening(process_groups({n["pgid"] for n in cluster["state"]["nodes"]}))
    dash_port = int(cluster["state"]["dashboard"].rsplit(":", 1)[1])
    assert any(x["port"] == dash_port for x in found), found  # the listing sees the nodes' sockets
    print("listeners:", [(x["name"], x["ip"], x["port"]) for x in found])
    metrics = _metrics_export_ports(cluster)
    assert len(metrics) == 1 + WORKERS, metrics
    assert open_without_auth([x for x in found if x["port"] not in metrics]) == []
    host = machine_address()
    exporters = [x for x in found if x["port"] in metrics and x["ip"] in ("0.0.0.0", "::")]
    if host is None or not exporters:  # no routable address here: Ray kept everything on loopback
        return
    readme = (ROOT / "cluster" / "README.md").read_text()
    assert "--metrics-export-port" in readme and "nft add rule" in readme  # documented, with the firewall rule
    for x in exporters:  # what answers is the documented exporter, whatever the path: Prometheus samples only
        for path in ("/metrics", "/api/jobs/"):
            with urllib.request.urlopen(f"http://{host}:{x['port']}{path}", timeout=10) as r:
                body = r.read().decode()
            lines = [line for line in body.splitlines() if line and not line.startswith("#")]
            assert lines and all(PROMETHEUS_SAMPLE.match(line) for line in lines), (x, path, body[:500])


def test_fastemb_jobs_cli_needs_the_token(cluster, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "fastemb.cli", "jobs", "list"], env=cluster["env"],
                        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert "SUBMISSION ID" in ok.stdout
    no_token = {**cluster["env"], "RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing"), "HOME": str(tmp_path)}
    bad = subprocess.run([sys.executable, "-m", "fastemb.cli", "jobs", "list"], env=no_token,
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 2
    assert "token" in bad.stderr.lower() and "Traceback" not in bad.stderr


# ------------------------------------------------------------- an index build losing an encoder actor
@pytest.mark.faults
def test_submitted_index_build_survives_a_killed_encoder_actor(cluster, shared, tmp_path, tiny_model):
    c = cluster
    corpus = write_fault_corpus(tmp_path)
    storage = tmp_path / "shared"
    run = storage / "ixf"
    def encoder_actors() -> dict[int, str]:
        return {a["pid"]: a["actor_id"] for a in live_actors(c["state"]["dashboard"], c["token"])
                if "MapWorker" in (a.get("class_name") or "") and a.get("pid")}

    killer = HeldActorKiller(tmp_path / "hold", encoder_actors, timeout_s=600)
    killer.start()
    job = subprocess.run(
        [sys.executable, "-m", "fastemb.cli", "submit", "jobs/index.yaml", "name=ixf", f"storage_path={storage}",
         f"corpus.path={corpus['path']}", f"model.base={tiny_model}", "embed.num_actors=2", "embed.batch_rows=32",
         "embed.rows_per_unit=1000000",
         "index.type=ivf_flat", "index.nlist=8", "index.refine=none", "index.add_tasks=2",
         "evaluate.enabled=false", "--shared", shared, "--env", f"{HOLD_ENV}={killer.hold_file}", "--follow"],
        env=c["env"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    killer.join(timeout=5)
    assert job.returncode == 0, (job.stdout + job.stderr)[-6000:]
    assert "SUCCEEDED" in job.stderr
    assert killer.error is None and killer.killed_pid is not None, killer.error
    assert killer.unit_unfinished_at_kill                               # killed holding a batch of an unpublished unit
    with pytest.raises(ProcessLookupError):
        os.kill(killer.killed_pid, 0)                                   # the process really is gone
    actor = state_api(c["state"]["dashboard"], "/api/v0/actors?limit=10&filter_keys=actor_id&filter_predicates=%3D"
                      f"&filter_values={killer.killed_actor}&detail=true", c["token"])
    assert actor and int(actor[0]["num_restarts"]) >= 1, actor              # and Ray restarted that actor
    ids = pq.read_table(run / "ids.parquet").column("id").to_pylist()
    assert len(ids) == len(set(ids)) == N_ROWS                          # nothing duplicated
    assert set(ids) == set(corpus["ids"])                               # nothing lost
    assert faiss.read_index(str(run / "index.faiss")).ntotal == N_ROWS
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["counts"]["index_entries"] == manifest["counts"]["documents_indexed"] == N_ROWS
    assert manifest["counts"]["skipped"] == {}
    # every shard row was embedded exactly once, so no skipped or duplicate row hides a retry's output
    shards = pq.read_table(run / "embeddings", columns=["id"]).column("id").to_pylist()
    assert sorted(shards) == sorted(corpus["ids"])


# ----------------------------------------- one training job: stopped, resubmitted, then losing a worker node
def _train_worker_nodes(dashboard: str, token: str) -> set[str]:
    """Names of the local-cluster nodes running a live RayTrainWorker."""
    actors = live_actors(dashboard, token)
    node_ids = {a["node_id"] for a in actors if a.get("class_name") == "RayTrainWorker"}
    names = set()
    for n in state_api(dashboard, "/api/v0/nodes?limit=1000&detail=false", token):
        if n["node_id"] in node_ids:
            names |= {k[len("fastemb_node_"):] for k in n.get("resources_total", {}) if k.startswith("fastemb_node_")}
    return names


def _checkpoints(run) -> set[str]:
    """The run's checkpoint folders. One counts as committed (reported by every rank) once the next one appears."""
    return {p.name for p in run.glob("checkpoint_*") if p.is_dir()}


@pytest.fixture(scope="module")
def faulted_job(cluster, shared, tmp_path_factory, tiny_eval, tiny_model):
    """One training job through two faults, each recovered from its last checkpoint:

    1. submitted, then stopped (`fastemb jobs stop`) after its first committed checkpoint;
    2. the same spec submitted again and followed (`--follow`): it resumes; once it has a committed checkpoint of its
       own, a worker node hosting one of its training workers is killed, Ray Train restarts the worker group on the
       remaining nodes, which resumes again, and the job runs to SUCCEEDED and exports.

    The resubmission is also the end-to-end acceptance run. Returns both submissions' outcomes and the run folder."""
    storage = tmp_path_factory.mktemp("shared")
    run = storage / "rs"
    spec = ["jobs/contrastive.yaml", "name=rs", f"storage_path={storage}", "data.max_pairs=512",
            f"data.eval={tiny_eval}", "general=null", f"model.base={tiny_model}",
            "train.micro_batch_size=16", "train.checkpoint_every=2", "train.num_workers=2",
            "train.max_failures=2", "--shared", shared]
    env = cluster["env"]
    first = _fastemb("submit", *spec, env=env)
    assert first.returncode == 0, first.stderr
    sid = first.stdout.splitlines()[0].strip()
    deadline = time.time() + 600
    while len(_checkpoints(run)) < 2:
        status = job_status(cluster["state"]["dashboard"], sid, cluster["token"])
        assert status in ("PENDING", "RUNNING"), f"job ended before a checkpoint: {status}"
        assert time.time() < deadline, "no checkpoint within the wait limit"
        time.sleep(2)
    stop = _fastemb("jobs", "stop", sid, "--wait", env=env)
    report_before_resume = (run / "report.json").exists()
    stopped_at = _checkpoints(run)

    again = subprocess.Popen([sys.executable, "-m", "fastemb.cli", "submit", *spec, "--follow"], env=env, cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim, killed = None, None
    try:  # after the resubmitted job's own first checkpoint, crash a worker node hosting a training worker
        deadline = time.time() + 600
        while victim is None:
            assert again.poll() is None, "the resubmitted job ended before it wrote a checkpoint"
            assert time.time() < deadline, "no checkpoint of the resubmitted job within the wait limit"
            if len(_checkpoints(run) - stopped_at) >= 2:
                busy = sorted(_train_worker_nodes(cluster["state"]["dashboard"], cluster["token"]) - {"head"})
                victim = busy[0] if busy else None
            time.sleep(1)
        killed = run_script("kill-node", "--dir", str(cluster["dir"] / "c"), "--node", victim, env=env)
        out, err = again.communicate(timeout=900)
    finally:
        if again.poll() is None:
            again.kill()
            again.communicate()
    return {"sid": sid, "stop": stop, "report_before_resume": report_before_resume, "victim": victim,
            "killed": killed, "again": subprocess.CompletedProcess(again.args, again.returncode, out, err),
            "run": run}


@pytest.mark.faults
def test_stopped_job_resumes_when_resubmitted(faulted_job):
    stop, again = faulted_job["stop"], faulted_job["again"]
    assert stop.returncode == 3 and stop.stdout.strip() == "STOPPED", stop.stdout + stop.stderr
    assert not faulted_job["report_before_resume"]
    assert again.returncode == 0, (again.stdout + again.stderr)[-6000:]
    sid2 = again.stdout.splitlines()[0].strip()
    assert sid2 != faulted_job["sid"] and "[fastemb train] resumed from checkpoint at step" in again.stdout
    report = json.loads((faulted_job["run"] / "report.json").read_text())
    resumed_at = [h["step"] for h in report["history"] if h.get("event") == "resumed"]
    assert resumed_at and min(resumed_at) >= 2, "the resubmission started over instead of resuming"


@pytest.mark.faults
def test_training_job_survives_losing_a_worker_node(faulted_job):
    killed, again = faulted_job["killed"], faulted_job["again"]
    assert faulted_job["victim"] and killed.returncode == 0, killed.stderr
    assert again.returncode == 0 and "SUCCEEDED" in again.stderr, (again.stdout + again.stderr)[-6000:]
    report = json.loads((faulted_job["run"] / "report.json").read_text())
    # two resumes in the history: the resubmission's, then the restart after the node loss (from a later checkpoint)
    resumed_at = [h["step"] for h in report["history"] if h.get("event") == "resumed"]
    assert report["resumes"] >= 2 and len(resumed_at) >= 2, "training did not resume after the node loss"
    assert resumed_at[-1] > resumed_at[0], f"the restart after the node loss did not resume its checkpoint: {resumed_at}"
    assert max(h["step"] for h in report["history"] if "loss" in h) == report["plan"]["total_steps"]
    assert (faulted_job["run"] / "model" / "model.safetensors").is_file()


def test_submit_contrastive_to_local_cluster(cluster, faulted_job):
    p, env = faulted_job["again"], cluster["env"]
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-6000:]
    sid = p.stdout.splitlines()[0].strip()
    assert sid.startswith("fastemb-train-rs-")
    assert f"job {sid} SUCCEEDED" in p.stderr
    assert "[fastemb train]" in p.stdout  # the driver's logs were followed (the job log holds its stdout and stderr)
    assert cluster["token"] not in out

    # Exported where the spec says, by the job running on the cluster.
    run = faulted_job["run"]
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

    client = JobSubmissionClient(cluster["state"]["dashboard"],
                                 headers={"Authorization": f"Bearer {cluster['token']}"})
    info = client.get_job_info(sid)
    assert info.metadata == {"fastemb_job": "train", "fastemb_spec": "jobs/contrastive.yaml", "fastemb_name": "rs"}
    stored = json.dumps({"entrypoint": info.entrypoint, "metadata": info.metadata,
                         "runtime_env": info.runtime_env})
    assert cluster["token"] not in stored and "RAY_AUTH_TOKEN" not in stored
    assert cluster["token"] not in client.get_job_logs(sid)
