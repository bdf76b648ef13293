"""Starting or joining Ray, with the environment every fastemb worker needs."""
from __future__ import annotations

import os
from pathlib import Path

import ray

from fastemb import logs
from fastemb.accelerator import ENV as ACCELERATOR_ENV

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
        ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
                 runtime_env=runtime_env, log_to_driver=True)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
