"""Helpers shared by the serve tests: a free local port and a Ray + Serve app started from a ServeJob."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx

from fastemb.ray_env import free_port  # noqa: F401  (re-exported for the serve tests)




def start_service(spec_dict: dict, env: dict[str, str] | None = None):
    """Start the fastemb Serve app; returns (spec, base_url). Without ``env`` it runs on the session's Ray (the test
    asks for ray_local); ``env`` (settings read when Serve starts, e.g. the HAProxy ingress) needs a Ray of its own,
    started here after the variables are set (the test asks for own_ray)."""
    import ray

    from fastemb.serve.job import start
    from fastemb.spec import parse_spec

    if env:
        for k, v in env.items():
            os.environ[k] = v  # before ray.init: local workers inherit the driver's environment
        if ray.is_initialized():
            ray.shutdown()
    spec = parse_spec({"job": "serve", "blocking": False, "ray": {"num_cpus": 2}, **spec_dict})
    start(spec)
    url = f"http://127.0.0.1:{spec.port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # serve.run returns once replicas run; the proxy may lag a little
        try:
            if httpx.get(url + "/healthz", timeout=10).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return spec, url


def stop_service(own_ray: bool = False) -> None:
    """Shut the Serve app down; a service with a Ray of its own goes with that Ray (ray.shutdown ends Serve and its
    HAProxy too, where serve.shutdown would wait about 30 s for HAProxy to drain)."""
    import ray
    from ray import serve

    if own_ray:
        ray.shutdown()
    else:
        serve.shutdown()


def replica_pids(app: str, deployment: str) -> dict[str, int]:
    """Live replicas of ``deployment``: actor name -> process id."""
    from fastemb.serve.job import replica_processes

    return replica_processes(app, deployment)


def kill_replica(app: str, deployment: str) -> str:
    """SIGKILL one live replica's process (a crash, not a shutdown); returns its actor name."""
    name, pid = sorted(replica_pids(app, deployment).items())[0]
    os.kill(pid, signal.SIGKILL)
    return name


def ride_out_outage(url: str, body: dict, before: set[str], app: str, deployment: str,
                    timeout_s: float = 120) -> list[dict]:
    """After the only replica was killed: requests one after another until one succeeds on a replica whose id is
    not in ``before`` (the replacement). Returns each request's {status, wait_s, json, retry_after}."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=30) as client:
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                r = client.post(url + "/v1/embeddings", json=body)
                status, text, retry = r.status_code, r.text, r.headers.get("retry-after")
            except httpx.HTTPError as err:
                status, text, retry = f"transport: {type(err).__name__}", "", None
            try:
                payload = json.loads(text)
            except ValueError:
                payload = None
            seen.append({"status": status, "wait_s": time.monotonic() - t0, "json": payload is not None,
                         "retry_after": retry, "code": (payload or {}).get("error", {}).get("code")})
            if status == 200 and set(replica_pids(app, deployment)) - before:
                return seen
            time.sleep(0.2)
    raise AssertionError(f"no answer from a new replica within {timeout_s}s: {seen[-5:]}")


class ClientThreads:
    """Background client threads running ``self._run(i)`` until the ``with`` block ends (``stop`` is set)."""

    def __init__(self, threads: int):
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i: int) -> None:
        raise NotImplementedError

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=90)
