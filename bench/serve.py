"""Online serving benchmark: fastemb (Ray Serve) vs Infinity vs a plain FastAPI + sentence-transformers server.

All servers serve the same model folder on CPU with the same thread count and are driven by the same closed-loop
load generator (N concurrent clients, each sending its next request as soon as the previous one returns) at several
concurrency levels, with short texts (WordNet definitions) and long texts (~200 tokens). Every server runs in its own
process tree, all started up front; each (texts, concurrency) cell is measured in ``--rounds`` slices that alternate
between the servers (order rotated every round), so load from other users of a shared machine hits every server
alike and the ratios stay meaningful. Figures go to bench/RESULTS.md through ``bench.results.write_section``.

    .venv/bin/python bench/serve.py [--seconds 12] [--rounds 3] [--levels 1,8,32] [--long-levels 1,8]

Infinity runs from its own venv; (re)create it with (the torch pin first, or pip pulls a CUDA build)::

    python3 -m venv /tmp/fe-venv-infinity
    /tmp/fe-venv-infinity/bin/pip install torch==2.13.0
    /tmp/fe-venv-infinity/bin/pip install 'infinity-emb[server,torch]'

Without it that column is skipped and the report says so. ``--variant NAME:K=V,K=V`` adds a fastemb server
started with extra environment variables (e.g. Ray Serve flags), measured like the others.

``--device cuda`` serves on this machine's GPU instead (bench/gpu.sh): fastemb's replica with ``replica.num_gpus``
(torch in fp16), the plain server's ``SentenceTransformer`` in ``.half()`` on the GPU, Infinity with ``--device cuda``
(where its venv exists); its section is "serve (GPU)".
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastemb.ray_env import free_port  # noqa: E402


# ------------------------------------------------------------------------------------------- plain server
def plain_server(model_path: str, port: int, threads: int, device: str = "cpu") -> None:
    """The baseline: FastAPI + SentenceTransformer.encode per request (no cross-request batching); fp16 on a GPU."""
    import torch
    import uvicorn
    from fastapi import FastAPI
    from fastapi.concurrency import run_in_threadpool
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(model_path, device=device)
    if device != "cpu":
        model.half()
    app = FastAPI()

    @app.post("/v1/embeddings")
    async def embeddings(body: dict):
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        vecs = await run_in_threadpool(model.encode, texts, batch_size=32)
        return {"object": "list", "model": body.get("model"),
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vecs.tolist())]}

    @app.get("/health")
    async def health():
        return {"ok": True}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# ------------------------------------------------------------------------------------------- fastemb server
def fastemb_server(model_path: str, port: int, threads: int, batch: int, proxy: str, device: str = "cpu") -> None:
    """fastemb's service as shipped (jobs/serve.yaml defaults), one replica of ``threads`` CPUs (and the GPU with
    ``device`` cuda: ``replica.num_gpus: 1``, fp16), until killed; ``proxy`` is its ``ingress.proxy`` (Serve's Python
    proxy or the HAProxy ingress)."""
    from fastemb.serve.job import start
    from fastemb.spec import parse_spec

    spec = parse_spec({"job": "serve", "port": port, "blocking": False, "ray": {"num_cpus": threads + 1},
                       "production": {"model": model_path},
                       "batching": {"max_batch_size": batch},
                       "autoscaling": {"min_replicas": 1, "max_replicas": 1},
                       "replica": {"num_cpus": threads, "num_gpus": 1 if device != "cpu" else 0},
                       "limits": {"max_inflight_requests": 4096}, "ingress": {"proxy": proxy},
                       "feedback_dir": tempfile.mkdtemp(prefix="fastemb-bench-ab-")})
    start(spec)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()


# ------------------------------------------------------------------------------------------- load generator
async def closed_loop(url: str, model: str, texts: list[str], concurrency: int, seconds: float,
                      per_request: int, warmup_s: float = 1.0, offset: int = 0) -> dict:
    """``concurrency`` clients in a closed loop for ``seconds`` (after ``warmup_s`` not recorded)."""
    import httpx

    latencies: list[float] = []
    errors = 0
    stop_at = 0.0
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        async def worker(wid: int, record: bool):
            nonlocal errors
            i = offset + wid * 7919
            while time.perf_counter() < stop_at:
                batch = [texts[(i + j) % len(texts)] for j in range(per_request)]
                i += per_request * concurrency
                t0 = time.perf_counter()
                try:
                    r = await client.post(url, json={"input": batch, "model": model, "encoding_format": "float"})
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if record:
                    if ok:
                        latencies.append(time.perf_counter() - t0)
                    else:
                        errors += 1

        stop_at = time.perf_counter() + warmup_s
        await asyncio.gather(*[worker(w, False) for w in range(concurrency)])
        started = time.perf_counter()
        stop_at = started + seconds
        await asyncio.gather(*[worker(w, True) for w in range(concurrency)])
        elapsed = time.perf_counter() - started
    return {"latencies": latencies, "errors": errors, "elapsed": elapsed}


def summarize(slices: list[dict], per_request: int) -> dict:
    """Throughput and latency percentiles over the slices of one server in one cell."""
    lat = np.array([x for s in slices for x in s["latencies"]]) * 1000
    elapsed = sum(s["elapsed"] for s in slices)
    n = len(lat)
    if not n:
        lat = np.array([np.nan])
    return {"requests": n, "errors": sum(s["errors"] for s in slices), "rps": n / elapsed,
            "texts_per_s": n * per_request / elapsed, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99))}


def check_vectors(url: str, model: str, texts: list[str], reference: np.ndarray) -> float:
    """Largest |difference| between the server's vectors and sentence-transformers' (same model)."""
    import httpx

    r = httpx.post(url, json={"input": texts, "model": model, "encoding_format": "float"}, timeout=120)
    r.raise_for_status()
    got = np.array([d["embedding"] for d in sorted(r.json()["data"], key=lambda d: d["index"])], dtype=np.float32)
    return float(np.abs(got - reference).max())


def wait_http(url: str, timeout_s: float = 300, proc: subprocess.Popen | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} not ready after {timeout_s}s")


# ------------------------------------------------------------------------------------------- servers
class ProcessServer:
    """A server in its own process group (so stopping it stops everything it started, Ray included)."""

    def __init__(self, name: str, cmd: list[str], port: int, health: str, url: str, model: str, env: dict):
        self.name, self.cmd, self.port, self.health, self.url, self.model, self.env = name, cmd, port, health, \
            url, model, env

    def start(self) -> "ProcessServer":
        slug = "".join(c if c.isalnum() else "_" for c in self.name.lower())
        log = open(ROOT / "bench" / "out" / f"serve_{slug}.log", "w")
        self.proc = subprocess.Popen(self.cmd, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def wait_ready(self) -> None:
        wait_http(self.health, proc=self.proc)

    def stop(self) -> None:
        import signal

        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def _env(threads: int) -> dict:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def fastemb_process(name: str, model_path: str, threads: int, batch: int, extra_env: dict,
                    proxy: str = "ray", device: str = "cpu") -> ProcessServer:
    port = free_port()
    cmd = [sys.executable, __file__, "--fastemb-server", "--port", str(port), "--model", model_path,
           "--threads", str(threads), "--batch-size", str(batch), "--proxy", proxy, "--device", device]
    env = {**_env(threads), "RAY_USAGE_STATS_ENABLED": "0", **extra_env}
    return ProcessServer(name, cmd, port, f"http://127.0.0.1:{port}/healthz",
                         f"http://127.0.0.1:{port}/v1/embeddings", "fastemb", env)


def infinity_process(python: str, model_path: str, threads: int, batch: int, device: str = "cpu") -> ProcessServer:
    port = free_port()
    exe = str(Path(python).parent / "infinity_emb")
    cmd = [exe, "v2", "--model-id", model_path, "--served-model-name", "minilm", "--port", str(port),
           "--host", "127.0.0.1", "--engine", "torch", "--device", device, "--batch-size", str(batch),
           "--url-prefix", "/v1", "--no-bettertransformer"] + (["--dtype", "float16"] if device != "cpu" else [])
    env = {**_env(threads), "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}
    return ProcessServer("Infinity", cmd, port, f"http://127.0.0.1:{port}/health",
                         f"http://127.0.0.1:{port}/v1/embeddings", "minilm", env)


def plain_process(model_path: str, threads: int, device: str = "cpu") -> ProcessServer:
    port = free_port()
    cmd = [sys.executable, __file__, "--plain-server", "--port", str(port), "--model", model_path,
           "--threads", str(threads), "--device", device]
    return ProcessServer("FastAPI+ST", cmd, port, f"http://127.0.0.1:{port}/health",
                         f"http://127.0.0.1:{port}/v1/embeddings", "minilm", _env(threads))


# ------------------------------------------------------------------------------------------- main
FASTEMB = "fastemb (Ray Serve)"
FASTEMB_HAPROXY = "fastemb (Serve + HAProxy ingress)"


def workloads() -> dict[str, list[str]]:
    import pyarrow.parquet as pq

    defs = pq.read_table(ROOT / "fastemb" / "datasets" / "wordnet" / "test_corpus.parquet").column("text")
    short = [t for t in defs.to_pylist()[:4000] if t]
    long = [" ".join(short[i:i + 14]) for i in range(0, 2800, 14)]  # ~150-250 tokens each
    return {"short": short, "long": long}


def parse_variant(text: str) -> tuple[str, dict]:
    """``NAME:K=V,K=V`` -> ("fastemb[NAME]", {K: V})."""
    name, _, pairs = text.partition(":")
    env = dict(p.split("=", 1) for p in pairs.split(",") if p)
    return f"fastemb[{name}]", env


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plain-server", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--fastemb-server", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help="model folder (default: the shipped all-MiniLM-L6-v2)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per server (1: multi-threaded OpenMP stalls on a loaded box)")
    ap.add_argument("--seconds", type=float, default=12.0, help="measured seconds per server and cell (all rounds)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating slices per cell")
    ap.add_argument("--levels", default="1,8,32", help="concurrency levels (short texts)")
    ap.add_argument("--long-levels", default="1,8", help="concurrency levels (long texts)")
    ap.add_argument("--per-request", type=int, default=1, help="texts per request")
    ap.add_argument("--batch-size", type=int, default=32, help="server batch size (fastemb and Infinity)")
    ap.add_argument("--infinity-python", default=os.environ.get("INFINITY_PYTHON", "/tmp/fe-venv-infinity/bin/python"))
    ap.add_argument("--proxy", default="ray", help=argparse.SUPPRESS)
    ap.add_argument("--servers", default="fastemb,fastemb-haproxy,infinity,plain")
    ap.add_argument("--variant", action="append", default=[], help="NAME:K=V,... extra fastemb server with env")
    ap.add_argument("--no-write", action="store_true", help="print the report, leave bench/RESULTS.md alone")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: every server on this machine's "
                    "GPU in fp16 (see the docstring)")
    args = ap.parse_args()

    from fastemb.model.encoder import resolve_model_path

    model_path = resolve_model_path(args.model or "all-MiniLM-L6-v2")
    if args.plain_server:
        plain_server(model_path, args.port, args.threads, args.device)
        return 0
    if args.fastemb_server:
        fastemb_server(model_path, args.port, args.threads, args.batch_size, args.proxy, args.device)
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    (ROOT / "bench" / "out").mkdir(parents=True, exist_ok=True)
    from sentence_transformers import SentenceTransformer

    texts = workloads()
    probe = texts["short"][:4] + texts["long"][:2]
    reference = SentenceTransformer(model_path, device="cpu").encode(probe)
    levels = {"short": [int(x) for x in args.levels.split(",") if x],
              "long": [int(x) for x in args.long_levels.split(",") if x]}

    servers, skipped = [], []
    wanted = args.servers.split(",")
    dev = args.device
    if "fastemb" in wanted:
        servers.append(fastemb_process(FASTEMB, model_path, args.threads, args.batch_size, {}, device=dev))
    if "fastemb-haproxy" in wanted:
        servers.append(fastemb_process(FASTEMB_HAPROXY, model_path, args.threads, args.batch_size, {}, "haproxy",
                                       dev))
    for v in args.variant:
        name, env = parse_variant(v)
        servers.append(fastemb_process(name, model_path, args.threads, args.batch_size, env, device=dev))
    if "infinity" in wanted:
        if Path(args.infinity_python).exists() and shutil.which(str(Path(args.infinity_python).parent / "infinity_emb")):
            servers.append(infinity_process(args.infinity_python, model_path, args.threads, args.batch_size, dev))
        else:
            skipped.append(f"Infinity: no venv at {args.infinity_python} (see this script's docstring)")
    if "plain" in wanted:
        servers.append(plain_process(model_path, args.threads, dev))

    diffs: dict[str, float] = {}
    live = []
    try:
        for srv in servers:
            srv.start()
        for srv in servers:
            try:
                srv.wait_ready()
                diffs[srv.name] = check_vectors(srv.url, srv.model, probe, reference)
                live.append(srv)
            except Exception as err:  # noqa: BLE001 - report a peer that could not run, keep the others
                skipped.append(f"{srv.name}: {type(err).__name__}: {err}")
                print(f"  skipped {srv.name}: {err}", flush=True)
                srv.stop()
        results: dict[str, dict] = {s.name: {} for s in live}
        slice_s = args.seconds / args.rounds
        for kind, lv in levels.items():
            for c in lv:
                slices: dict[str, list] = {s.name: [] for s in live}
                for r in range(args.rounds):
                    order = live[r % len(live):] + live[:r % len(live)] if live else []
                    for srv in order:
                        slices[srv.name].append(asyncio.run(closed_loop(
                            srv.url, srv.model, texts[kind], c, slice_s, args.per_request, offset=r * 104729)))
                for srv in live:
                    res = results[srv.name][(kind, c)] = summarize(slices[srv.name], args.per_request)
                    print(f"  {srv.name:22s} {kind:5s} c={c:3d}: {res['texts_per_s']:7.1f} texts/s  p50 "
                          f"{res['p50_ms']:7.1f} ms  p99 {res['p99_ms']:7.1f} ms  errors {res['errors']}", flush=True)
    finally:
        for srv in servers:
            if hasattr(srv, "proc"):
                srv.stop()

    body = report(results, diffs, skipped, args)
    print(body)
    if results and not args.no_write:
        from bench.results import write_section

        write_section("serve (GPU)" if args.device == "cuda" else "serve", body)
    return 0


def report(results: dict, diffs: dict, skipped: list[str], args) -> str:
    names = list(results)
    where = "CPU," if args.device == "cpu" else f"one GPU ({_gpu_name()}), fp16 on every server,"
    lines = [f"Model all-MiniLM-L6-v2 (same folder for every server), {where} {args.threads} thread(s) per server, "
             f"{args.per_request} text(s) per request, closed loop. All servers up at once; each cell measured for "
             f"{args.seconds:.0f} s per server in {args.rounds} slices alternating between servers (order rotated "
             "each round, 1 s warm-up per slice). The host is shared with other jobs: compare the ratios.", ""]
    lines.append("| server | texts | concurrency | texts/s | p50 ms | p99 ms | errors |")
    lines.append("|---|---|---|---|---|---|---|")
    for n in names:
        for (kind, c), r in results[n].items():
            lines.append(f"| {n} | {kind} | {c} | {r['texts_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
                         f"| {r['errors']} |")
    ours = [n for n in names if n.startswith("fastemb")]
    if ours:
        lines += ["", "Ratios (fastemb / peer): throughput (above 1 = fastemb faster), and p99 latency (below 1 = "
                  "fastemb faster).", "", "| fastemb | peer | texts | concurrency | throughput ratio | p99 ratio |",
                  "|---|---|---|---|---|---|"]
        for o in ours:
            for n in names:
                if n.startswith("fastemb") and (n == o or o != FASTEMB):
                    continue  # each fastemb server vs the peers; the default one also vs the other fastemb ones
                for key, r in results[n].items():
                    f = results[o].get(key)
                    if f:
                        lines.append(f"| {o} | {n} | {key[0]} | {key[1]} | "
                                     f"{f['texts_per_s'] / max(r['texts_per_s'], 1e-9):.2f} | "
                                     f"{f['p99_ms'] / max(r['p99_ms'], 1e-9):.2f} |")
    lines += ["", "Max |vector - SentenceTransformer.encode| per server: "
              + ", ".join(f"{n}: {d:.1e}" for n, d in diffs.items())]
    if args.variant:
        lines += ["", "Variants (fastemb with extra environment): " + "; ".join(args.variant)]
    if skipped:
        lines += ["", "Not measured: " + "; ".join(skipped)]
    return "\n".join(lines)


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device seen by the driver"


if __name__ == "__main__":
    sys.exit(main())
