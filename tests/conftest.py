"""Shared fixtures and the test tiers: one local Ray per test session, small real data made from the shipped
WordNet and Debian-descriptions sets, and a one-layer cut of the shipped MiniLM for the end-to-end tests of a
mechanism (``tiny_model``)."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# pytest-xdist test processes share the machine's cores: each one's torch (and that of the fastemb commands it
# starts) gets its share of them, not all. With two processes on two cores, torch's default of two threads each
# spent 15-30 % more CPU time per evaluation (measured: 2.65-3.80 CPU-s against 1.84-3.22 on one thread).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
# Read by Ray workers, which inherit the environment the session's Ray starts with, so these are set before it starts:
# the API key of tests/test_serve.py's service (api_key_env), and the credentials of the local S3 endpoint of
# tests/test_object_storage.py (moto accepts any; nothing else here talks to S3).
SERVE_TEST_API_KEY = ("FASTEMB_TEST_API_KEY", "test-key-7f1c")
os.environ.setdefault(*SERVE_TEST_API_KEY)
for _k, _v in {"AWS_ACCESS_KEY_ID": "fastemb-test", "AWS_SECRET_ACCESS_KEY": "fastemb-test",
               "AWS_DEFAULT_REGION": "us-east-1"}.items():
    os.environ.setdefault(_k, _v)
# One metrics cache for the session (fastemb/eval/cache.py), shared by its jobs, subprocesses and Ray workers like a
# user's ~/.cache/fastemb/metrics, and new for each session: a session measures each model on each set once.
_SESSION_METRICS = None
if "FASTEMB_METRICS_CACHE" not in os.environ:
    _SESSION_METRICS = tempfile.mkdtemp(prefix="fastemb-metrics-")
    os.environ["FASTEMB_METRICS_CACHE"] = _SESSION_METRICS
from fastemb.data.eval_sets import write_subset  # noqa: E402

# Ray Serve reads these when its processes start; `fastemb serve` sets them before it starts Ray, so the serve tests
# that run on the session's Ray get the same Serve as a user does.
from fastemb.serve.deployments import SERVE_FAST_PATH_ENV, proxy_env  # noqa: E402
from fastemb.spec import ServeJob  # noqa: E402

for _k, _v in {**SERVE_FAST_PATH_ENV, **proxy_env(ServeJob())}.items():
    os.environ.setdefault(_k, _v)

WORDNET = Path(__file__).resolve().parents[1] / "fastemb" / "datasets" / "wordnet"


TIERS = ("unit", "ray", "cluster", "gpu")
# A test's tier: an explicit marker (cluster and gpu modules declare theirs), else derived from what it uses: the
# session's Ray (ray_local) or a Ray it starts itself (own_ray) make it a ray test, anything else is a unit test
# (and the unit_guard fixture fails a unit test that starts Ray anyway). Tiers run in this order: unit tests first,
# then the tests on the session's Ray, then those that start their own, then the multi-node cluster tests.
RAY_FIXTURES = ("ray_local", "own_ray")


def _tier(item) -> str:
    explicit = {m.name for m in item.iter_markers() if m.name in TIERS}
    if len(explicit) > 1:
        raise pytest.UsageError(f"{item.nodeid}: more than one tier marker ({', '.join(sorted(explicit))})")
    if explicit:
        return explicit.pop()
    return "ray" if any(f in item.fixturenames for f in RAY_FIXTURES) else "unit"


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m selection sees the markers
def pytest_collection_modifyitems(config, items) -> None:
    """Give every test its tier marker, and order the session: unit, session-Ray, own-Ray, cluster, gpu (in a
    pytest-xdist test process: longest first, ``_longest_first``)."""
    rank = {}
    for item in items:
        tier = _tier(item)
        if not item.get_closest_marker(tier):
            item.add_marker(tier)
        own = "own_ray" in item.fixturenames
        rank[item.nodeid] = (TIERS.index(tier), own)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank = _longest_first(items, rank)
    items.sort(key=lambda item: rank[item.nodeid])  # stable: file order within a tier


def _longest_first(items, rank: dict) -> dict:
    """The order of a pytest-xdist test process (dev.sh runs two; whole files each, in this order:
    --no-loadscope-reorder): the cluster tier, then the tests on a Ray of their own, then the files that inject faults
    (whole jobs, killed and recovered), then the other Ray tests, and the many short unit files last, which fill the
    end of both processes' queues so that neither finishes a long file alone; the gpu tier stays last of all."""
    faults = {item.path for item in items if item.get_closest_marker("faults")}
    gpu, order = TIERS.index("gpu"), {}
    for item in items:
        tier, own = rank[item.nodeid]
        order[item.nodeid] = (tier == gpu, -tier, not own, item.path not in faults)
    return order


# Skips: only the gpu tier may skip (where there is no CUDA). The session ends with one line listing every skipped
# test; with FASTEMB_ONLY_GPU_SKIPS=1 (.ci/run sets it) a skipped test of another tier fails the run.
ONLY_GPU_SKIPS_ENV = "FASTEMB_ONLY_GPU_SKIPS"


def _skips(config) -> tuple[list[str], list[str]]:
    """(gpu-tier, other) node ids of the session's skipped tests."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    reports = [r for r in (reporter.stats.get("skipped", []) if reporter else []) if getattr(r, "nodeid", "")]
    gpu = [r.nodeid for r in reports if "gpu" in r.keywords]
    return gpu, [r.nodeid for r in reports if "gpu" not in r.keywords]


def pytest_sessionfinish(session, exitstatus) -> None:
    if _SESSION_METRICS:
        shutil.rmtree(_SESSION_METRICS, ignore_errors=True)
    if os.environ.get(ONLY_GPU_SKIPS_ENV) == "1" and _skips(session.config)[1] and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    gpu, other = _skips(config)
    for line in RAY_WAITS:
        terminalreporter.write_line(f"ray_local: {line}", yellow=True)
    terminalreporter.write_line(f"skipped tests: {len(gpu) + len(other)} ({len(gpu)} gpu)"
                                + "".join(f"\n  {n}" for n in gpu + other))
    if other:
        enforced = os.environ.get(ONLY_GPU_SKIPS_ENV) == "1"
        terminalreporter.write_line(f"{'error' if enforced else 'warning'}: {len(other)} skipped test(s) outside "
                                    "the gpu tier: " + ", ".join(other), red=enforced, yellow=not enforced)


@pytest.fixture(autouse=True)
def unit_guard(request):
    """A unit test must not start Ray: it would be slow, and it would belong to the ray tier."""
    import sys

    if not request.node.get_closest_marker("unit"):
        yield
        return
    ray = sys.modules.get("ray")
    before = ray is not None and ray.is_initialized()
    accelerator = os.environ.get("DS_ACCELERATOR")
    yield
    ray = sys.modules.get("ray")
    if not before and ray is not None and ray.is_initialized():
        pytest.fail("this unit test started Ray: request the ray_local fixture (or own_ray) so it runs in the ray "
                    "tier")
    if os.environ.get("DS_ACCELERATOR") != accelerator:  # the session's Ray, started later, would inherit it
        leaked = os.environ.get("DS_ACCELERATOR")
        if accelerator is None:
            del os.environ["DS_ACCELERATOR"]
        else:
            os.environ["DS_ACCELERATOR"] = accelerator
        pytest.fail(f"this unit test left DS_ACCELERATOR={leaked!r} in the environment (was {accelerator!r}): "
                    "set it with monkeypatch.setenv before changing it")


def _cpus_free(ray, timeout_s: float) -> bool:
    """Whether every CPU of the local Ray is free within ``timeout_s`` (Ray frees a finished job's CPUs
    asynchronously; a test that leaked a placement group or actor would starve the next one)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0) >= ray.cluster_resources().get("CPU", 0):
            return True
        time.sleep(0.5)
    return False


@pytest.fixture(scope="session")
def _ray_session():
    """Shuts down the session's local Ray at the end (tests that need a fresh Ray stop it themselves)."""
    import ray

    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def own_ray():
    """For tests that start a Ray of their own (a Serve app with its own environment, a subprocess job, a local
    cluster): the session's Ray is shut down first, so two Rays never compete for the 2 CPUs."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    yield


RAY_WAITS: list[str] = []  # modules whose ray_local waited for CPUs an earlier module held (listed at the end)


def _holders(ray) -> str:
    """What holds CPUs of the local Ray: live actors by class."""
    from collections import Counter

    from ray.util.state import list_actors

    alive = Counter(a.class_name for a in list_actors(address=ray.get_runtime_context().gcs_address,
                                                      filters=[("state", "=", "ALIVE")]))
    return ", ".join(f"{n}× {name}" for name, n in alive.most_common()) or "no live actor"


@pytest.fixture(scope="module")
def ray_local(_ray_session, request):
    """The session's local Ray (2 CPUs), started on first use and kept for the next module (not shut down per
    module); started again if a test shut it down, and restarted if a test left CPUs held.

    In a pytest-xdist test process (dev.sh runs two) each module gets a Ray of its own, shut down after it: there the
    files a process runs follow each other in another order than in one process, and in the first of three measured runs
    that kept a process's Ray across files, the Ray Data job of tests/test_chunking.py, started on the Ray that
    tests/test_domain.py's training runs had used, made no progress for 30 minutes (Ray Data's ExecutionTimeoutError:
    ``MapBatches(EmbedActor): 0 active task(s)``). The second passed, no faster than with a Ray per module. The third
    (at c7a72b3) ran behind a run with a Ray per module throughout, then hung in the session's last ``ray.shutdown()``
    (joining Ray's log-printing thread) for over 4 minutes, until it was killed."""
    import ray

    from fastemb.ray_env import init_ray

    started = time.monotonic()
    if ray.is_initialized() and not _cpus_free(ray, 60):
        RAY_WAITS.append(f"{request.module.__name__}: CPUs still held after 60 s ({_holders(ray)}); Ray restarted")
        ray.shutdown()
    elif time.monotonic() - started > 5:
        RAY_WAITS.append(f"{request.module.__name__}: waited {time.monotonic() - started:.0f} s for free CPUs")
    if not ray.is_initialized():
        init_ray(num_cpus=2)
    yield ray
    if os.environ.get("PYTEST_XDIST_WORKER") and ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_eval(tmp_path_factory) -> str:
    """A small real evaluation folder: 40 WordNet queries per split against 300 definitions."""
    return write_subset("wordnet", tmp_path_factory.mktemp("tiny_eval"), 40, 260)


@pytest.fixture(scope="session")
def tiny_general(tmp_path_factory) -> str:
    """A small real general-domain folder: 16 Debian package synopses per split against 64 long descriptions (each
    evaluation at the export's 256 tokens per text costs seconds: a training test runs up to ten of them)."""
    return write_subset("debian-descriptions", tmp_path_factory.mktemp("tiny_general"), 16, 48)


@pytest.fixture(scope="session")
def minilm_path() -> str:
    from fastemb.model.encoder import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, minilm_path) -> str:
    """The base of the end-to-end tests that check a mechanism (faults and resumption, export, tuning, serving,
    index builds) rather than a quality figure: all-MiniLM-L6-v2 cut to its last layer, as ``model.num_layers: 1``
    cuts it (fastemb/model/layers.py). A real model with the base's tokenizer, pooling and 256-token length, it
    trains and evaluates at about half the cost of the six layers (a small training run, measured: 49 s against
    86 s). Tests of a quality figure keep the full model."""
    from fastemb.model.encoder import Encoder
    from fastemb.model.layers import cut_to_student

    out = tmp_path_factory.mktemp("tiny_model") / "minilm-1-layer"
    encoder = Encoder.load(minilm_path)
    cut_to_student(encoder.transformer, None, 1)  # model.num_layers: 1
    encoder.save(out)
    return str(out)
