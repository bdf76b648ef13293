"""Starting or joining Ray, with the environment every fastemb worker needs."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import ray

from fastemb import logs
from fastemb.accelerator import ENV as ACCELERATOR_ENV

LOOPBACK = "127.0.0.1"
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"  # read by Ray Train's controller
_VENV_EXT_DIR = Path(os.environ.get("VIRTUAL_ENV", Path(__file__).resolve().parents[1] / ".venv")) / "torch_extensions"


def worker_env(threads: int = 1) -> dict[str, str]:
    """Environment variables for Ray workers: thread counts, no hub access, DeepSpeed's op folder, fastemb's logging,
    and ``DS_ACCELERATOR`` only when it is set here (then it overrides the spec's choice: fastemb/accelerator.py)."""
    env = {
        "OMP_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(_VENV_EXT_DIR)),
        **logs.worker_env(),
    }
    if os.environ.get(ACCELERATOR_ENV):
        env[ACCELERATOR_ENV] = os.environ[ACCELERATOR_ENV]
    return env


def init_ray(address: str | None = None, num_cpus: int | None = None, threads_per_worker: int = 1) -> None:
    """Join ``address`` or start an embedded local Ray (token auth is Ray's default for local clusters)."""
    if ray.is_initialized():
        return
    for k, v in worker_env(threads_per_worker).items():
        os.environ.setdefault(k, v)
    runtime_env = {"env_vars": worker_env(threads_per_worker), "worker_process_setup_hook": logs.SETUP_HOOK}
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        # inside a submitted Ray job: the job's runtime_env already applies (Ray refuses to merge env vars)
        ray.init(address=address or "auto", log_to_driver=True)
        return
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        # Ray's own actors (Ray Train's PlacementGroupCleaner, ...) call the state API with no address; with two
        # local Rays on one machine that fails ("multiple active Ray instances") and, for the cleaner, leaks the
        # CPUs of every trial stopped early. Pinning the dashboard port lets the workers name their own cluster.
        port = free_port()
        runtime_env["env_vars"]["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        # Ray Train's PreemptionWatcher polls for draining nodes: one machine has none to drain. Off, each worker
        # group starts one actor process fewer and its controller logs no "PreemptionWatcher ... constructor
        # arguments" error line.
        runtime_env["env_vars"][PREEMPTION_WATCHER_ENV] = "0"
        with _loopback_node():
            ray.init(num_cpus=num_cpus, _node_ip_address=LOOPBACK, include_dashboard=True, dashboard_host=LOOPBACK,
                     dashboard_port=port, runtime_env=runtime_env, log_to_driver=True)


@contextmanager
def _loopback_node():
    """An embedded Ray is one node of this machine: its address is 127.0.0.1, and Ray then binds the ports it opens
    to loopback (GCS, raylet and worker gRPC servers, the dashboard agent, the Prometheus exporters of the metrics
    agent, the dashboard and the autoscaler), where with the machine's address it binds them to all interfaces.

    Ray 2.60 replaces a loopback ``_node_ip_address`` by the machine's address unless it runs as no cluster: its
    ``ray_constants.ENABLE_RAY_CLUSTER`` (from ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``, read when ray is imported, which
    is too early to set here). So that switch is off while ``ray.init`` picks the address; it is not an environment
    variable, so a ``ray start`` node launched later from this process still joins clusters as usual."""
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
