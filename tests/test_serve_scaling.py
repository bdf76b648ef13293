"""Autoscaling and fault tolerance on the local cluster: replicas go up under load and back down after it,
a replica killed under load costs only a few counted errors (the requests it held) while Serve replaces it with a
new one, and when the only replica is SIGKILLed every request gets an answer within seconds (a JSON 503 with
Retry-After) until its replacement serves.

The service runs the default single-arm layout: one fused deployment (HTTP API + model), so the killed replica is
the one the proxy talks to and its in-flight requests fail in Serve's proxy, which answers them with fastemb's JSON
503 (fastemb/serve/proxy.py); every other request is answered.

Bounded loops only (a deadline on every wait, a fixed number of load threads against 127.0.0.1).
"""
from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import pytest

from serve_helpers import (ClientThreads, free_port, kill_replica, replica_pids, ride_out_outage, start_service,
                           stop_service)

APP = "fastemb"


@pytest.fixture(scope="module")
def service(ray_local, tmp_path_factory):
    spec, url = start_service({
        "port": free_port(),
        "production": {"model": "all-MiniLM-L6-v2"},
        "autoscaling": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
                        "upscale_delay_s": 1, "downscale_delay_s": 3, "look_back_period_s": 11},
        "replica": {"num_cpus": 1, "health_check_period_s": 2},
        "feedback_dir": str(tmp_path_factory.mktemp("ab")),
    })
    yield spec, url
    stop_service()


def running_replicas() -> int:
    from ray import serve

    dep = serve.status().applications[APP].deployments["production"]
    return int(dep.replica_states.get("RUNNING", 0))


def wait_for(pred, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


class Load(ClientThreads):
    """``threads`` closed-loop clients posting small embedding requests until stopped (or 240 s)."""

    def __init__(self, url: str, threads: int = 6):
        self.url, self.codes = url, Counter()
        self.lock = threading.Lock()
        self.bad_bodies = 0
        super().__init__(threads)

    def _run(self, i: int) -> None:
        body = {"input": [f"a short definition number {i}" for i in range(16)], "model": "fastemb"}
        deadline = time.monotonic() + 240
        with httpx.Client(timeout=60) as client:
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    r = client.post(self.url + "/v1/embeddings", json=body)
                    code = r.status_code
                    ok_body = ("data" in r.json()) if code == 200 else ("error" in r.json())
                except httpx.HTTPError:
                    code, ok_body = "transport", True
                except ValueError:  # a body that is not JSON: never (the proxy's own errors are made JSON too)
                    code, ok_body = f"{code}-not-json", False
                with self.lock:
                    self.codes[code] += 1
                    self.bad_bodies += 0 if ok_body else 1

    def snapshot(self) -> Counter:
        with self.lock:
            return Counter(self.codes)


@pytest.mark.faults
def test_autoscaling_up_under_load_kill_a_replica_then_down(service):
    import ray

    _, url = service
    assert running_replicas() == 1
    with Load(url) as load:
        wait_for(lambda: running_replicas() >= 2, 120, "a second replica under load")
        before = load.snapshot()
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["name"].startswith(f"SERVE_REPLICA::{APP}#production#")]
        assert len(names) >= 2
        ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
        # the service keeps answering: successes continue while Serve replaces the killed replica
        wait_for(lambda: load.snapshot()[200] >= before[200] + 20, 90, "successes after the kill")
        # the replacement is a new replica (a new id), not just the survivor still running
        wait_for(lambda: set(replica_pids(APP, "production")) - set(names), 90, "a new replica after the kill")
        after = load.snapshot()
    errors = {k: v for k, v in after.items() if k != 200}
    print(f"load results by status: {dict(after)}; errors around the kill: {errors}")
    # only the requests the killed replica held (at most one per client, plus a retry each while the proxy learns
    # of the death) fail, as fastemb's JSON 503; never a malformed body or an error from fastemb's own code (500)
    assert sum(errors.values()) <= 2 * len(load.threads), errors
    assert load.bad_bodies == 0 and set(errors) <= {503}, errors
    assert httpx.post(url + "/v1/embeddings", json={"input": "still here", "model": "fastemb"},
                      timeout=60).status_code == 200
    wait_for(lambda: running_replicas() == 1, 150, "scale back down to min_replicas after the load")


@pytest.mark.faults
def test_only_replica_killed_answers_503_fast_until_replaced(service):
    """SIGKILL the only replica: no request waits more than a few seconds (Serve alone queues them until a new
    replica serves, 10 s or more), each failure is a JSON 503 with Retry-After, and a new replica takes over."""
    _, url = service
    # one replica: the one the scale-down kept, once the one it removed has drained and exited
    wait_for(lambda: running_replicas() == 1 and len(replica_pids(APP, "production")) == 1, 90, "a single replica")
    before = set(replica_pids(APP, "production"))
    kill_replica(APP, "production")
    seen = ride_out_outage(url, {"input": ["after the crash"], "model": "fastemb"}, before, APP, "production")
    failures = [r for r in seen if r["status"] != 200]
    print(f"{len(seen)} requests until the new replica served; failures: {failures[:5]}...")
    assert failures, "no request failed: the replica was not down"
    assert all(r["status"] == 503 and r["json"] and r["retry_after"] for r in failures), failures
    assert max(r["wait_s"] for r in seen) < 5, max(r["wait_s"] for r in seen)
    assert any(r["code"] == "no_replica" for r in failures), failures  # the bounded wait, not only a dead-replica 500
