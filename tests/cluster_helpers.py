"""Shared by the cluster tests: start/stop cluster/local_cluster.py with a private token and dir."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "cluster" / "local_cluster.py"


def api_get(dashboard: str, path: str, token: str | None, timeout: float = 5.0) -> tuple[int, str]:
    """cluster/local_cluster.py's authenticated GET (imported from the script's folder once)."""
    if str(SCRIPT.parent) not in sys.path:
        sys.path.insert(0, str(SCRIPT.parent))
    from local_cluster import api_get as get

    return get(dashboard, path, token, timeout)


def run_script(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@contextmanager
def local_cluster(workers: int = 2, head_cpus: int = 1, worker_cpus: int = 1):
    """Yields {dir, state, env, token}; always stops the nodes it started (by process group)."""
    d = Path(tempfile.mkdtemp(prefix="fe-", dir="/tmp"))  # short: Ray's socket paths are length-limited
    token_path = d / "auth_token"
    token = secrets.token_hex(32)
    fd = os.open(token_path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, token.encode())
    os.close(fd)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "RAY_API_SERVER"))}
    env.update(RAY_AUTH_TOKEN_PATH=str(token_path), HOME=str(d / "home"), RAY_USAGE_STATS_ENABLED="0")
    (d / "home").mkdir()
    started = run_script("start", "--dir", str(d / "c"), "--workers", str(workers), "--head-cpus", str(head_cpus),
                         "--worker-cpus", str(worker_cpus), "--port", "0", "--dashboard-port", "0", env=env)
    state_file = d / "c" / "cluster.json"
    ok = False
    try:
        assert started.returncode == 0, f"cluster did not start:\n{started.stdout}\n{started.stderr}"
        state = json.loads(state_file.read_text())
        env["RAY_ADDRESS"] = state["dashboard"]
        yield {"dir": d, "state": state, "env": env, "token": token, "start": started}
        ok = True
    finally:
        stopped = run_script("stop", "--dir", str(d / "c"), env=env, timeout=120)
        if state_file.exists():  # stop failed: end our process groups directly
            for n in json.loads(state_file.read_text())["nodes"]:
                try:
                    os.killpg(n["pgid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass
        assert stopped.returncode == 0, stopped.stderr
        if ok:  # keep the node logs (d/c/logs, d/c/ray*/session_*/logs) of a failed test
            shutil.rmtree(d, ignore_errors=True)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def state_api(dashboard: str, path: str, token: str):
    """GET a Ray state API path (``/api/v0/...``) of a token-auth cluster; returns the result rows."""
    status, body = api_get(dashboard, path, token)
    assert status == 200, body[:500]
    return json.loads(body)["data"]["result"]["result"]


def live_actors(dashboard: str, token: str) -> list[dict]:
    """The cluster's live actors (class_name, pid, node_id, ...)."""
    return state_api(dashboard, "/api/v0/actors?limit=1000&filter_keys=state&filter_predicates=%3D"
                                "&filter_values=ALIVE&detail=false", token)


def job_status(dashboard: str, submission_id: str, token: str) -> str:
    """A submitted job's status (PENDING, RUNNING, ...) from the Jobs REST API, without starting a process: a wait
    loop that ran `fastemb jobs status` every two seconds spent a Python start and a Ray import on each poll."""
    status, body = api_get(dashboard, f"/api/jobs/{submission_id}", token, timeout=30)
    assert status == 200, body[:500]
    return json.loads(body)["status"]
