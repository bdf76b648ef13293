"""Online serving benchmark: fastemb (Ray Serve) vs Infinity vs a plain FastAPI + sentence-transformers server, each
side on each engine it offers on CPU, so that the serving stack and the inference engine show apart.

All servers serve the same model (all-MiniLM-L6-v2) on CPU with the same thread count and are driven by the same
closed-loop load generator (N concurrent clients, each sending its next request as soon as the previous one returns)
at several concurrency levels, with short texts (WordNet definitions) and long texts (~200 tokens). Every server runs
in its own process tree, all started up front, one at a time; each (texts, concurrency) cell is measured in
``--rounds`` slices that alternate between the servers (order rotated every round), so load from other users of a
shared machine hits every server alike; each ratio is computed per round, and its spread over the rounds is printed
next to it.

Servers (``--servers``, default all):

- ``fastemb``, ``fastemb-haproxy``: fastemb's service as shipped (``backend: auto`` = ONNX Runtime fp32 on CPU), behind
  Serve's Python proxy or the HAProxy ingress; ``fastemb-torch``, ``fastemb-haproxy-torch``: the same with
  ``backend: torch``; ``fastemb-int8``, ``fastemb-haproxy-int8``: with ``backend: onnx-int8`` (fastemb/model/quantize.py);
  ``fastemb-haproxy-reuse-int8``: HAProxy with Serve's ``http-reuse always`` kept (``ingress.haproxy_server_close:
  false``), to measure what a fresh replica connection per request costs (not in the default set);
- ``infinity-int8``: Infinity's optimum engine (ONNX Runtime) on an int8 dynamically quantised export, which its CPU
  path prefers (its fastest CPU engine here); ``infinity-onnx``: the same engine on an fp32 export, graph-optimised
  (optimum -O2); ``infinity-torch``: Infinity's torch engine (sentence-transformers);
- ``plain``: FastAPI + ``SentenceTransformer.encode`` (torch), one request at a time.

The ratio table pairs servers that differ in one thing (the stack at the same engine, the engine in the same stack, the
ingress), and each side at its best; the headline sentence says which is which.

    .venv/bin/python bench/serve.py [--seconds 12] [--rounds 3] [--levels 1,8,32] [--long-levels 1,8]
    .venv/bin/python bench/serve.py --quick      # 2 s per cell, concurrency 1 and 8, short texts: a smoke run

Infinity runs from its own venv; (re)create it with (the torch pin first, or pip pulls a CUDA build)::

    python3 -m venv /tmp/fe-venv-infinity
    /tmp/fe-venv-infinity/bin/pip install torch==2.13.0
    /tmp/fe-venv-infinity/bin/pip install 'infinity-emb[server,torch,optimum]==0.0.78'

(``optimum`` is the extra of its ONNX engine: optimum 2.1 + optimum-onnx, onnxruntime.) This script exports the model
to ONNX with that venv's ``optimum-cli`` (``--library-name transformers``: plain last_hidden_state outputs, which
Infinity pools itself), optimises the fp32 graph (``-O2``) and quantises an int8 copy (AVX512-VNNI or AVX2 per this
CPU), once, into ``bench/out/serve_onnx/``. Two workarounds for infinity-emb 0.0.78 with optimum 2.x, neither slowing
it: Infinity starts in the model folder with ``--model-id ./`` (it hands optimum an absolute ONNX file name, which
optimum 2 refuses), and with ``--onnx-disable-optimize`` (its own optimisation pass calls an optimum 1 API; the fp32
folder is optimised beforehand instead). Without the venv the Infinity columns are skipped and the report says so.
``--variant NAME:K=V,K=V`` adds a fastemb server started with extra environment variables, measured like the others.

``--device cuda`` serves on this machine's GPU instead (bench/gpu.sh), every server in fp16 on torch (the ONNX engines
run on CPU only): fastemb's replica with ``replica.num_gpus: 1`` (``backend: auto`` picks torch there; ``fastemb``,
``fastemb-haproxy``), Infinity's torch engine with ``--device cuda --dtype float16`` (``infinity-torch``) and the plain
server's ``SentenceTransformer`` in ``.half()`` (``plain``); its section is "serve (GPU)".
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import os
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
def fastemb_server(model_path: str, port: int, threads: int, batch: int, proxy: str, backend: str,
                   device: str = "cpu") -> None:
    """fastemb's service as shipped (jobs/serve.yaml defaults), one replica of ``threads`` CPUs (and the GPU with
    ``device`` cuda: ``replica.num_gpus: 1``, fp16), until killed; ``proxy`` is its ``ingress.proxy`` (Serve's Python
    proxy or the HAProxy ingress; ``haproxy-reuse``: HAProxy with ``haproxy_server_close: false``), ``backend`` its
    engine."""
    from fastemb.serve.job import start
    from fastemb.spec import parse_spec

    spec = parse_spec({"job": "serve", "port": port, "blocking": False, "ray": {"num_cpus": threads + 1},
                       "production": {"model": model_path, "backend": backend},
                       "batching": {"max_batch_size": batch},
                       "autoscaling": {"min_replicas": 1, "max_replicas": 1},
                       "replica": {"num_cpus": threads, "num_gpus": 1 if device != "cpu" else 0},
                       "limits": {"max_inflight_requests": 4096},
                       "ingress": {"proxy": "haproxy" if proxy.startswith("haproxy") else proxy,
                                   "haproxy_server_close": proxy != "haproxy-reuse"},
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
    """Throughput and latency percentiles over the slices of one server in one cell, and texts/s of each slice."""
    lat = np.array([x for s in slices for x in s["latencies"]]) * 1000
    elapsed = sum(s["elapsed"] for s in slices)
    n = len(lat)
    if not n:
        lat = np.array([np.nan])
    return {"requests": n, "errors": sum(s["errors"] for s in slices), "rps": n / elapsed,
            "texts_per_s": n * per_request / elapsed, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)),
            "rounds": [len(s["latencies"]) * per_request / s["elapsed"] for s in slices]}


def check_vectors(url: str, model: str, texts: list[str], reference: np.ndarray) -> float:
    """Largest |difference| between the server's vectors and sentence-transformers' (same model)."""
    import httpx

    r = httpx.post(url, json={"input": texts, "model": model, "encoding_format": "float"}, timeout=120)
    r.raise_for_status()
    got = np.array([d["embedding"] for d in sorted(r.json()["data"], key=lambda d: d["index"])], dtype=np.float32)
    return float(np.abs(got - reference).max())


def check_engine(engine: str, diff: float) -> None:
    """Refuse a server whose vectors do not fit the engine it is said to run: an int8 engine differs from
    sentence-transformers' fp32 vectors by more than 1e-3, an fp32 one by at most 1e-4 (measured in one run: a server
    named int8 answered with fp32 vectors, 1.8e-07 off, from another server's replica)."""
    if "int8" in engine and diff <= 1e-3:
        raise RuntimeError(f"its vectors are {diff:.1e} from fp32: not those of {engine}")
    if "fp32" in engine and diff > 1e-4:
        raise RuntimeError(f"its vectors are {diff:.1e} from fp32: not those of {engine}")


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
    """A server in its own process group (so stopping it stops everything it started, Ray included); ``stack``,
    ``engine`` and ``batching`` say what it runs, for the report."""

    def __init__(self, name: str, cmd: list[str], port: int, health: str, url: str, model: str, env: dict, *,
                 stack: str, engine: str, batching: str, cwd: str | None = None):
        self.name, self.cmd, self.port, self.health, self.url, self.model, self.env = name, cmd, port, health, \
            url, model, env
        self.stack, self.engine, self.batching, self.cwd = stack, engine, batching, cwd

    def start(self) -> "ProcessServer":
        slug = "".join(c if c.isalnum() else "_" for c in self.name.lower())
        log = open(ROOT / "bench" / "out" / f"serve_{slug}.log", "w")
        self.proc = subprocess.Popen(self.cmd, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=self.cwd)
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


FASTEMB_ENGINES = {"onnx": "ONNX Runtime fp32 (fastemb's export; backend auto)", "torch": "torch fp32 (backend torch)",
                   "onnx-int8": "ONNX Runtime int8 (fastemb's export, dynamic quantisation; backend onnx-int8)",
                   "cuda": "torch fp16 on the GPU (backend auto, replica.num_gpus 1)"}


_FASTEMB_SERVERS = itertools.count()  # fastemb servers built so far in this run


def _ingress_ports() -> dict[str, str]:
    """Ports of its own for the replicas' direct-ingress servers of each fastemb server this run starts (each runs its
    own Ray and Serve controller). In one full run the three HAProxy-mode servers' replicas shared Ray's default range
    (bound 30000, 30001 and 30002 after retries) and the third answered with another server's fp32 vectors; two such
    servers alone answered right, so the cause is not established, and ``check_engine`` catches it if it recurs."""
    low = next(_FASTEMB_SERVERS) * 50
    return {"RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(31000 + low),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(31000 + low + 49),
            "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(41000 + low),
            "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(41000 + low + 49)}


def fastemb_process(name: str, model_path: str, threads: int, batch: int, extra_env: dict,
                    proxy: str = "ray", backend: str = "onnx", device: str = "cpu") -> ProcessServer:
    """fastemb's server on ``backend``, or on the GPU with ``device`` cuda (where ``backend: auto`` picks torch)."""
    port = free_port()
    backend = "auto" if device == "cuda" else backend
    cmd = [sys.executable, __file__, "--fastemb-server", "--port", str(port), "--model", model_path,
           "--threads", str(threads), "--batch-size", str(batch), "--proxy", proxy, "--backend", backend,
           "--device", device]
    env = {**_env(threads), "RAY_USAGE_STATS_ENABLED": "0", **_ingress_ports(), **extra_env}
    stack = "Ray Serve, " + {"haproxy": "HAProxy ingress", "haproxy-reuse": "HAProxy ingress, http-reuse always"}.get(
        proxy, "Serve's Python proxy")
    return ProcessServer(name, cmd, port, f"http://127.0.0.1:{port}/healthz",
                         f"http://127.0.0.1:{port}/v1/embeddings", "fastemb", env, stack=stack,
                         engine=FASTEMB_ENGINES["cuda" if device == "cuda" else backend],
                         batching=f"@serve.batch: ≤ {batch} items and ≤ 8192 padded tokens per forward pass, "
                                  "length-sorted, no wait")


INFINITY_ENGINES = {"int8": "ONNX Runtime int8 (optimum engine, dynamic quantisation)",
                    "onnx": "ONNX Runtime fp32 (optimum engine, -O2 graph)", "torch": "torch fp32 (sentence-transformers)",
                    "cuda": "torch fp16 on the GPU (sentence-transformers, --dtype float16)"}


def infinity_process(python: str, model_path: str, threads: int, batch: int, engine: str,
                     onnx_dirs: dict[str, str], device: str = "cpu") -> ProcessServer:
    """Infinity on ``engine``: ``torch`` serves ``model_path`` (in fp16 on the GPU with ``device`` cuda); ``int8``/
    ``onnx`` serve that ONNX folder with its optimum engine, started in the folder (``--model-id ./``, see the module
    docstring)."""
    port = free_port()
    exe = str(Path(python).parent / "infinity_emb")
    common = ["--served-model-name", "minilm", "--port", str(port), "--host", "127.0.0.1", "--device", device,
              "--batch-size", str(batch), "--url-prefix", "/v1", "--pooling-method", "mean",
              *(["--dtype", "float16"] if device == "cuda" else [])]
    if engine == "torch":
        cmd, cwd = [exe, "v2", "--model-id", model_path, "--engine", "torch", "--no-bettertransformer", *common], None
    else:
        cmd, cwd = [exe, "v2", "--model-id", "./", "--engine", "optimum", "--onnx-disable-optimize", *common], \
            onnx_dirs[engine]
    env = {**_env(threads), "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1",
           "HF_HOME": str(ROOT / "bench" / "out" / "serve_infinity_hf")}
    return ProcessServer(f"Infinity ({engine})", cmd, port, f"http://127.0.0.1:{port}/health",
                         f"http://127.0.0.1:{port}/v1/embeddings", "minilm", env, stack="Infinity (FastAPI, uvicorn)",
                         engine=INFINITY_ENGINES["cuda" if device == "cuda" else engine],
                         batching=f"its batch queue: ≤ {batch} items per forward pass", cwd=cwd)


def prepare_infinity_onnx(python: str, model_path: str, out: Path) -> dict[str, str]:
    """The model exported to ONNX with the Infinity venv's optimum: {"onnx": fp32 -O2 folder, "int8": quantised
    folder}; made once (a folder with its ONNX file is reused)."""
    cli = str(Path(python).parent / "optimum-cli")
    plain, fp32, int8 = out / "export", out / "fp32-O2", out / "int8"
    flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").exists() else ""
    isa = "--avx512_vnni" if "avx512_vnni" in flags else "--avx2"
    steps = [(plain / "model.onnx", [cli, "export", "onnx", "--model", model_path, "--task", "feature-extraction",
                                     "--library-name", "transformers", str(plain)]),
             (fp32 / "model_optimized.onnx", [cli, "onnxruntime", "optimize", "--onnx_model", str(plain), "-O2",
                                              "-o", str(fp32)]),
             (int8 / "model_quantized.onnx", [cli, "onnxruntime", "quantize", "--onnx_model", str(plain), isa,
                                              "-o", str(int8)])]
    for made, cmd in steps:
        if not made.exists():
            print(f"  preparing {made.relative_to(out)} with optimum ({isa[2:] if 'quantize' in cmd else 'fp32'})",
                  flush=True)
            subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, **_env(2)})
    return {"onnx": str(fp32), "int8": str(int8)}


def plain_process(model_path: str, threads: int, device: str = "cpu") -> ProcessServer:
    port = free_port()
    cmd = [sys.executable, __file__, "--plain-server", "--port", str(port), "--model", model_path,
           "--threads", str(threads), "--device", device]
    engine = "torch fp16 on the GPU (sentence-transformers, `.half()`)" if device == "cuda" else \
        "torch fp32 (sentence-transformers)"
    return ProcessServer("FastAPI+ST", cmd, port, f"http://127.0.0.1:{port}/health",
                         f"http://127.0.0.1:{port}/v1/embeddings", "minilm", _env(threads),
                         stack="FastAPI + uvicorn, one request at a time", engine=engine,
                         batching="none across requests (encode batch 32 within one)")


# ------------------------------------------------------------------------------------------- main
SERVERS = ("fastemb,fastemb-haproxy,fastemb-torch,fastemb-haproxy-torch,fastemb-int8,fastemb-haproxy-int8,infinity-int8,"
           "infinity-onnx,infinity-torch,plain")
GPU_SERVERS = "fastemb,fastemb-haproxy,infinity-torch,plain"  # --device cuda: torch fp16 everywhere
EXTRA_SERVERS = "fastemb-haproxy-reuse-int8"  # named only: not in the default set
# engine families: servers whose family matches run the same computation, so their ratio is the stack's alone
FAMILY = {"ONNX Runtime fp32": "ONNX Runtime fp32", "ONNX Runtime int8": "ONNX Runtime int8",
          "torch fp32": "torch fp32", "torch fp16": "torch fp16"}


def family(server: ProcessServer) -> str:
    return next(f for k, f in FAMILY.items() if server.engine.startswith(k))


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


def build_servers(args, model_path: str, skipped: list[str]) -> list[ProcessServer]:
    """The servers ``--servers`` names (an Infinity one only where its venv is), in a fixed order."""
    wanted = args.servers.split(",")
    servers = []
    for key, proxy, backend in (("fastemb", "ray", "onnx"), ("fastemb-haproxy", "haproxy", "onnx"),
                                ("fastemb-torch", "ray", "torch"), ("fastemb-haproxy-torch", "haproxy", "torch"),
                                ("fastemb-int8", "ray", "onnx-int8"), ("fastemb-haproxy-int8", "haproxy", "onnx-int8"),
                                ("fastemb-haproxy-reuse-int8", "haproxy-reuse", "onnx-int8")):
        if key in wanted:
            engine = "GPU" if args.device == "cuda" else {"onnx": "ONNX", "onnx-int8": "int8"}.get(backend, backend)
            ingress = {"haproxy": "HAProxy", "haproxy-reuse": "HAProxy reuse"}.get(proxy, "Serve")
            name = f"fastemb ({ingress}, {engine})"
            servers.append(fastemb_process(name, model_path, args.threads, args.batch_size, {}, proxy, backend,
                                           args.device))
    for v in args.variant:
        name, env = parse_variant(v)
        servers.append(fastemb_process(name, model_path, args.threads, args.batch_size, env, device=args.device))
    engines = [e for e in ("int8", "onnx", "torch") if f"infinity-{e}" in wanted]
    if engines:
        exe = Path(args.infinity_python).parent / "infinity_emb"
        if not (Path(args.infinity_python).exists() and exe.exists()):
            skipped.append(f"Infinity: no venv at {args.infinity_python} (see this script's docstring)")
            engines = []
        onnx_dirs = {}
        if set(engines) - {"torch"}:
            try:
                onnx_dirs = prepare_infinity_onnx(args.infinity_python, model_path, ROOT / "bench" / "out" / "serve_onnx")
            except subprocess.CalledProcessError as err:
                skipped.append(f"Infinity ONNX export failed: {(err.stderr or '')[-300:]}")
                engines = [e for e in engines if e == "torch"]
        for e in engines:
            servers.append(infinity_process(args.infinity_python, model_path, args.threads, args.batch_size, e,
                                            onnx_dirs, args.device))
    if "plain" in wanted:
        servers.append(plain_process(model_path, args.threads, args.device))
    return servers


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
    ap.add_argument("--backend", default="onnx", help=argparse.SUPPRESS)
    ap.add_argument("--section", default=None, help="RESULTS.md section to write (default: serve, or serve (GPU)); "
                    "a run of a few servers writes its own section instead of replacing the full one")
    ap.add_argument("--servers", default=None, help=f"comma-separated subset of {SERVERS} (default: all; with "
                    f"--device cuda a subset of {GPU_SERVERS}, default those)")
    ap.add_argument("--variant", action="append", default=[], help="NAME:K=V,... extra fastemb server with env")
    ap.add_argument("--quick", action="store_true", help="smoke run: 4 s per cell in 2 rounds, short texts at 1 and 8")
    ap.add_argument("--no-write", action="store_true", help="print the report, leave bench/RESULTS.md alone")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: every server on this machine's "
                    "GPU in fp16 (see the docstring)")
    args = ap.parse_args()
    offered = GPU_SERVERS if args.device == "cuda" else SERVERS
    args.servers = args.servers or offered
    known = offered if args.device == "cuda" else f"{offered},{EXTRA_SERVERS}"
    unknown = sorted(set(args.servers.split(",")) - set(known.split(",")))
    if unknown:
        ap.error(f"--servers: {', '.join(unknown)} not among {known} (on --device {args.device})")
    if args.quick:
        args.seconds, args.rounds, args.levels, args.long_levels = 4.0, 2, "1,8", ""

    from fastemb.model.encoder import resolve_model_path

    model_path = resolve_model_path(args.model or "all-MiniLM-L6-v2")
    if args.plain_server:
        plain_server(model_path, args.port, args.threads, args.device)
        return 0
    if args.fastemb_server:
        fastemb_server(model_path, args.port, args.threads, args.batch_size, args.proxy, args.backend, args.device)
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    (ROOT / "bench" / "out").mkdir(parents=True, exist_ok=True)
    from sentence_transformers import SentenceTransformer

    texts = workloads()
    probe = texts["short"][:4] + texts["long"][:2]
    reference = SentenceTransformer(model_path, device="cpu").encode(probe)
    levels = {"short": [int(x) for x in args.levels.split(",") if x],
              "long": [int(x) for x in args.long_levels.split(",") if x]}

    skipped: list[str] = []
    servers = build_servers(args, model_path, skipped)
    diffs: dict[str, float] = {}
    live = []
    try:
        # one at a time: ten servers (six of them a Ray each) starting at once on two cores starve Serve's proxies of
        # their readiness checks, and Serve kills them (measured: five of six fastemb servers exited at start)
        for srv in servers:
            try:
                srv.start().wait_ready()
                diffs[srv.name] = check_vectors(srv.url, srv.model, probe, reference)
                check_engine(srv.engine, diffs[srv.name])
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
                    print(f"  {srv.name:26s} {kind:5s} c={c:3d}: {res['texts_per_s']:7.1f} texts/s  p50 "
                          f"{res['p50_ms']:7.1f} ms  p99 {res['p99_ms']:7.1f} ms  errors {res['errors']}", flush=True)
    finally:
        for srv in servers:
            if hasattr(srv, "proc"):
                srv.stop()

    body = report(results, diffs, skipped, live, args)
    print(body)
    if results and not args.no_write:
        from bench.results import write_section

        write_section(args.section or ("serve (GPU)" if args.device == "cuda" else "serve"), body)
    return 0


def comparisons(live: list[ProcessServer]) -> list[tuple[ProcessServer, ProcessServer, str]]:
    """(fastemb server, other server, what their ratio isolates): pairs that differ in one thing (the stack at the
    same engine, the engine or the ingress within fastemb), and fastemb against each peer on a different engine."""
    out = []
    for i, a in enumerate(live):
        if not a.name.startswith("fastemb"):
            continue
        for b in live[i + 1:]:
            same_engine = family(a) == family(b)
            if b.name.startswith("fastemb"):
                if same_engine and a.stack != b.stack:
                    out.append((a, b, f"ingress ({family(a)} both)"))
                elif not same_engine and a.stack == b.stack:
                    out.append((a, b, f"engine ({a.stack.split(', ')[1]} both)"))
            elif same_engine:
                out.append((a, b, f"serving stack ({family(a)} both)"))
            elif family(a) == "ONNX Runtime fp32":
                out.append((a, b, f"stack + engine ({family(a)} vs {family(b)})"))
    return out


def report(results: dict, diffs: dict, skipped: list[str], live: list[ProcessServer], args) -> str:
    from bench.results import mean_std, ratio_verdict

    names = list(results)
    where = "CPU," if args.device == "cpu" else f"one GPU ({_gpu_name()}), fp16 on every server,"
    lines = [f"Model all-MiniLM-L6-v2 (same weights for every server), {where} {args.threads} thread(s) per server "
             f"(OMP_NUM_THREADS; fastemb's replica and ONNX session use the replica's CPUs), {args.per_request} "
             f"text(s) per request, closed loop. All servers up at once; each cell measured for {args.seconds:g} s per "
             f"server in {args.rounds} slices alternating between servers (order rotated each round, 1 s warm-up per "
             "slice). The host is shared with other jobs: compare the ratios, each computed per round (mean ± std over "
             "the rounds).", "",
             "| server | stack | engine | batch policy | threads | max abs diff vs sentence-transformers |",
             "|---|---|---|---|---|---|"]
    for srv in live:
        lines.append(f"| {srv.name} | {srv.stack} | {srv.engine} | {srv.batching} | {args.threads} | "
                     f"{diffs.get(srv.name, float('nan')):.1e} |")
    lines += ["", "| server | texts | concurrency | texts/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|---|"]
    for n in names:
        for (kind, c), r in results[n].items():
            lines.append(f"| {n} | {kind} | {c} | {r['texts_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
                         f"| {r['errors']} |")
    pairs = [(a, b, what) for a, b, what in comparisons(live) if a.name in results and b.name in results]
    by_what: dict[str, list[float]] = {}
    if pairs:
        lines += ["", "Ratios A / B: throughput (above 1 = A faster; per round, mean ± std, and who wins: only where "
                  "the rounds' spread excludes 1), and p99 latency (below 1 = A faster). *Isolates*: the one thing "
                  "that differs between A and B.", "",
                  "| A | B | isolates | texts | concurrency | throughput ratio | verdict | p99 ratio |",
                  "|---|---|---|---|---|---|---|---|"]
        for a, b, what in pairs:
            for key, rb in results[b.name].items():
                ra = results[a.name].get(key)
                if not ra:
                    continue
                ratios = [x / max(y, 1e-9) for x, y in zip(ra["rounds"], rb["rounds"])]
                m, s = mean_std(ratios)
                by_what.setdefault(what, []).append(m)
                lines.append(f"| {a.name} | {b.name} | {what} | {key[0]} | {key[1]} | {m:.2f} ± {s:.2f} | "
                             f"{ratio_verdict(ratios, 'A', 'B').split(':')[0]} | "
                             f"{ra['p99_ms'] / max(rb['p99_ms'], 1e-9):.2f} |")
    if by_what:
        lines += ["", "**What the throughput ratios isolate** (range of the cells' mean ratios A / B): "
                  + "; ".join(f"{what}: {min(v):.2f}–{max(v):.2f}×" for what, v in by_what.items())
                  + ". Same-engine rows measure the serving stack alone; engine rows measure the engine within "
                  "fastemb's stack; stack + engine rows compare each side on its own fastest engine."]
    if args.variant:
        lines += ["", "Variants (fastemb with extra environment): " + "; ".join(args.variant)]
    if skipped:
        lines += ["", "Not measured: " + "; ".join(skipped)]
    return "\n".join(lines)


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device seen by torch"


if __name__ == "__main__":
    sys.exit(main())
