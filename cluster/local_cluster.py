#!/usr/bin/env python
"""Start and stop a local multi-node Ray cluster (a head and N workers as separate ``ray start``
processes on this machine) with token auth on and every port bound to 127.0.0.1.

    .venv/bin/python cluster/local_cluster.py start --workers 2      # head + 2 worker nodes
    eval "$(.venv/bin/python cluster/local_cluster.py env)"          # RAY_ADDRESS, RAY_AUTH_* for clients
    fastemb submit jobs/contrastive.yaml --follow
    .venv/bin/python cluster/local_cluster.py kill-node --node worker1   # simulate a node crash
    .venv/bin/python cluster/local_cluster.py stop

Each node is one ``ray start --block`` process in its own session (process group); ``stop`` ends
exactly those process groups (never ``ray stop``, which would kill every Ray on the machine).
State (ports, process ids, log paths) lives in ``--dir`` (default /tmp/fastemb-cluster), as do
Ray's temp dirs, so this cluster never touches another Ray's ``/tmp/ray``. Each node has its own temp dir
(``ray`` for the head, ``ray-worker1``, ...), as on separate machines: nodes sharing one would share one
``runtime_resources`` folder, and a node unpacking a job's working_dir (Ray removes and re-extracts it on
each node's first use) would pull the code from under a driver importing it on another node.

Token: ``RAY_AUTH_TOKEN`` if set, else the file at ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``
(the order Ray itself uses); a missing file is created (mode 0600). The token is never printed.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = Path(os.environ.get("FASTEMB_CLUSTER_DIR", "/tmp/fastemb-cluster"))
STATE = "cluster.json"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_busy(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def token_source() -> tuple[str | None, Path]:
    """(token from RAY_AUTH_TOKEN or None, token file path), following Ray's lookup order."""
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    return os.environ.get("RAY_AUTH_TOKEN") or None, path


def read_token() -> str | None:
    token, path = token_source()
    if token:
        return token.strip()
    return path.read_text().strip() if path.is_file() else None


def ensure_token() -> Path:
    """Make sure a token exists (creating the file if needed); returns the file path."""
    token, path = token_source()
    if not token and not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        print(f"[local_cluster] generated a new auth token in {path}", flush=True)
    return path


def node_env() -> dict[str, str]:
    """Environment of every node: token auth, fastemb's worker env, this Python first on PATH."""
    env = dict(os.environ)
    try:
        sys.path.insert(0, str(ROOT))
        from fastemb.ray_env import worker_env

        for k, v in worker_env().items():
            env.setdefault(k, v)
    except ImportError:  # fastemb not importable: the cluster still works for plain Ray jobs
        pass
    token, path = token_source()
    env["RAY_AUTH_MODE"] = "token"
    if not token:
        env["RAY_AUTH_TOKEN_PATH"] = str(path)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Job entrypoints (`python -m fastemb.cli ...`) and workers resolve to this interpreter.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _ray_bin() -> str:
    exe = Path(sys.executable).parent / "ray"
    return str(exe) if exe.exists() else "ray"


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> int:
    with open(log, "ab") as out:
        p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env, start_new_session=True)
    return p.pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours (only when start/stop run in one process) counts as dead.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def api_get(dashboard: str, path: str, token: str | None, timeout: float = 5.0) -> tuple[int, str]:
    req = urllib.request.Request(dashboard.rstrip("/") + path)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def alive_nodes(dashboard: str, token: str | None) -> int:
    status, body = api_get(dashboard, "/api/v0/nodes?limit=1000&detail=false", token)
    if status != 200:
        return -1
    rows = json.loads(body)["data"]["result"]["result"]
    return sum(1 for r in rows if r.get("state") == "ALIVE")


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def load_state(d: Path) -> dict | None:
    p = d / STATE
    return json.loads(p.read_text()) if p.is_file() else None


def start(a) -> int:
    d = Path(a.dir).resolve()
    state = load_state(d)
    if state and any(_group_alive(n["pgid"]) for n in state["nodes"]):
        print(f"[local_cluster] a cluster from {d} is already running (stop it first)", file=sys.stderr)
        return 1
    d.mkdir(parents=True, exist_ok=True)
    (d / "logs").mkdir(exist_ok=True)
    ensure_token()
    env = node_env()
    host = a.host
    port = a.port or free_port(host)
    dash = a.dashboard_port or free_port(host)
    for p in (port, dash):
        if _port_busy(p, host):
            print(f"[local_cluster] port {p} is in use; pass --port/--dashboard-port 0 for free ones", file=sys.stderr)
            return 1
    dashboard = f"http://{host}:{dash}"
    common = ["--block", f"--node-ip-address={host}", "--num-gpus=0", "--disable-usage-stats",
              "--min-worker-port=0", "--max-worker-port=0",
              f"--object-store-memory={a.object_store_mb * 1024 * 1024}"]
    state = {"dir": str(d), "address": f"{host}:{port}", "dashboard": dashboard,
             "token_path": None if os.environ.get("RAY_AUTH_TOKEN") else str(token_source()[1]), "nodes": []}

    def launch(name: str, extra: list[str], cpus: int, resources: dict) -> None:
        log = d / "logs" / f"{name}.log"
        # A per-node resource ("fastemb_node_worker1": 1) tells the nodes apart in Ray's state API.
        resources = {**resources, f"fastemb_node_{name}": 1}
        temp_dir = d / ("ray" if name == "head" else f"ray-{name}")
        args = [_ray_bin(), "start", *common, *extra, f"--temp-dir={temp_dir}", f"--num-cpus={cpus}",
                f"--dashboard-agent-listen-port={free_port(host)}", f"--resources={json.dumps(resources)}"]
        pid = _spawn(args, log, env)
        state["nodes"].append({"name": name, "pgid": pid, "log": str(log), "cpus": cpus})
        (d / STATE).write_text(json.dumps(state, indent=2))

    launch("head", ["--head", f"--port={port}", f"--dashboard-host={host}", f"--dashboard-port={dash}",
                    "--include-dashboard=true", f"--ray-client-server-port={free_port(host)}"],
           a.head_cpus, {"head": 1})
    token = read_token()
    deadline = time.time() + a.timeout
    while alive_nodes_safe(dashboard, token) < 1:
        if not _alive(state["nodes"][0]["pgid"]) or time.time() > deadline:
            print(f"[local_cluster] the head node did not come up; its log:\n{_tail(Path(state['nodes'][0]['log']))}",
                  file=sys.stderr)
            stop_state(state)
            return 1
        time.sleep(1)
    # One node at a time, each retried once: on a busy machine a raylet can miss Ray's fixed 30 s
    # registration window, and starting nodes together makes that likelier.
    want = 1 + a.workers
    for i in range(a.workers):
        name = f"worker{i + 1}"
        for attempt in (1, 2):
            launch(name, [f"--address={host}:{port}"], a.worker_cpus, {"worker": 1})
            node = state["nodes"][-1]
            while (n := alive_nodes_safe(dashboard, token)) < i + 2 and _alive(node["pgid"]) \
                    and time.time() < deadline:
                time.sleep(1)
            if n >= i + 2:
                break
            if _group_alive(node["pgid"]):
                try:
                    os.killpg(node["pgid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass
            state["nodes"].pop()
            (d / STATE).write_text(json.dumps(state, indent=2))
            if attempt == 2 or time.time() > deadline:
                print(f"[local_cluster] {n}/{want} nodes up; {name} log:\n{_tail(Path(node['log']))}",
                      file=sys.stderr)
                stop_state(state)
                return 1
            print(f"[local_cluster] {name} did not come up; retrying once", flush=True)
    print(f"[local_cluster] {want} nodes up (head {a.head_cpus} CPU, {a.workers} × {a.worker_cpus} CPU workers)")
    print(f"[local_cluster] GCS {state['address']}   dashboard / Jobs API {dashboard}   (token auth on)")
    print(f"[local_cluster] clients: eval \"$({sys.executable} {Path(__file__).resolve()} env --dir {d})\"")
    return 0


def alive_nodes_safe(dashboard: str, token: str | None) -> int:
    try:
        return alive_nodes(dashboard, token)
    except (OSError, ValueError, KeyError):
        return -1


def stop_state(state: dict, grace: float = 5.0) -> list[int]:
    """End the process groups this script started (SIGTERM, then SIGKILL after ``grace`` seconds: a ``ray start
    --block`` node's GCS and raylet outlive its SIGTERM by more than 10 s here); returns those still alive."""
    groups = [n["pgid"] for n in state["nodes"]]
    for g in reversed(groups):  # workers first, head last
        try:
            os.killpg(g, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace
    while time.time() < deadline and any(_group_alive(g) for g in groups):
        time.sleep(0.5)
    for g in groups:
        if _group_alive(g):
            try:
                os.killpg(g, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.time() + 15
    while time.time() < deadline and any(_group_alive(g) for g in groups):
        time.sleep(0.5)
    return [g for g in groups if _group_alive(g)]


def stop(a) -> int:
    d = Path(a.dir).resolve()
    state = load_state(d)
    if not state:
        print(f"[local_cluster] no cluster state in {d}; nothing to stop")
        return 0
    left = stop_state(state)
    if left:
        print(f"[local_cluster] process groups still alive: {left}", file=sys.stderr)
        return 1
    (d / STATE).unlink()
    print(f"[local_cluster] stopped {len(state['nodes'])} nodes (logs kept in {d / 'logs'})")
    return 0


def status(a) -> int:
    state = load_state(Path(a.dir).resolve())
    if not state:
        print("[local_cluster] not running")
        return 1
    n = alive_nodes_safe(state["dashboard"], read_token())
    print(json.dumps({**state, "alive_nodes": n,
                      "processes_alive": {x["name"]: _group_alive(x["pgid"]) for x in state["nodes"]}}, indent=2))
    return 0 if n == len(state["nodes"]) else 1


def kill_node(a) -> int:
    """Simulate a crash: SIGKILL one node's process group (the cluster keeps running without it)."""
    d = Path(a.dir).resolve()
    state = load_state(d)
    node = next((n for n in (state or {}).get("nodes", []) if n["name"] == a.node), None)
    if node is None or node["name"] == "head":
        print(f"[local_cluster] no worker node {a.node!r} to kill", file=sys.stderr)
        return 1
    try:
        os.killpg(node["pgid"], signal.SIGKILL)
    except ProcessLookupError:
        pass
    state["nodes"] = [n for n in state["nodes"] if n is not node]
    (d / STATE).write_text(json.dumps(state, indent=2))
    print(f"[local_cluster] killed {a.node}")
    return 0


def env(a) -> int:
    """Shell exports for clients (no token value: only where to find it)."""
    state = load_state(Path(a.dir).resolve())
    if not state:
        print("[local_cluster] not running", file=sys.stderr)
        return 1
    print(f"export RAY_ADDRESS={state['dashboard']}")
    print("export RAY_AUTH_MODE=token")
    if state.get("token_path"):
        print(f"export RAY_AUTH_TOKEN_PATH={state['token_path']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["start", "stop", "status", "env", "kill-node"])
    p.add_argument("--node", help="kill-node: the worker to kill, e.g. worker1")
    p.add_argument("--dir", default=str(DEFAULT_DIR), help="state, logs and Ray temp dir (keep the path short)")
    p.add_argument("--workers", type=int, default=2, help="worker nodes besides the head")
    p.add_argument("--head-cpus", type=int, default=1, help="CPUs of the head (runs job drivers)")
    p.add_argument("--worker-cpus", type=int, default=1, help="CPUs of each worker node")
    p.add_argument("--host", default="127.0.0.1", help="address every port binds to (keep loopback)")
    p.add_argument("--port", type=int, default=6379, help="GCS port (0: a free one)")
    p.add_argument("--dashboard-port", type=int, default=8265, help="dashboard / Jobs API port (0: a free one)")
    p.add_argument("--object-store-mb", type=int, default=512, help="object store per node")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for all nodes")
    a = p.parse_args(argv)
    return {"start": start, "stop": stop, "status": status, "env": env, "kill-node": kill_node}[a.command](a)


if __name__ == "__main__":
    sys.exit(main())
