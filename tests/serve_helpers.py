"""Helpers shared by the serve tests: a free local port and a Ray + Serve app started from a ServeJob."""
from __future__ import annotations

import os
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
