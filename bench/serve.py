"""Online serving benchmark: fastemb (Ray Serve) vs Infinity vs a plain FastAPI + sentence-transformers server.

All three serve the same model folder on CPU with the same thread count, one after the other in this run, and are
driven by the same closed-loop load generator (N concurrent clients, each sending its next request as soon as the
previous one returns) at several concurrency levels, with short texts (WordNet definitions) and long texts
(~200 tokens). Figures go to bench/RESULTS.md through ``bench.results.write_section``.

    .venv/bin/python bench/serve.py [--seconds 10] [--levels 1,8,32] [--infinity-python /tmp/fe-venv-infinity/bin/python]

Infinity runs from its own venv (``python -m venv /tmp/fe-venv-infinity && /tmp/fe-venv-infinity/bin/pip install
torch==2.13.0 'infinity-emb[server,torch]'``); without it that column is skipped and the report says so.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ------------------------------------------------------------------------------------------- plain server
def plain_server(model_path: str, port: int, threads: int) -> None:
    """The baseline: FastAPI + SentenceTransformer.encode per request (no cross-request batching)."""
    import torch
    import uvicorn
    from fastapi import FastAPI
    from fastapi.concurrency import run_in_threadpool
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(model_path, device="cpu")
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


# ------------------------------------------------------------------------------------------- load generator
async def closed_loop(url: str, model: str, texts: list[str], concurrency: int, seconds: float,
                      per_request: int, headers: dict | None = None) -> dict:
    """``concurrency`` clients in a closed loop for ``seconds`` (after a short warm-up); latency per request."""
    import httpx

    latencies: list[float] = []
    errors = 0
    stop_at = 0.0
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits, headers=headers) as client:
        async def worker(wid: int, record: bool):
            nonlocal errors
            i = wid * 7919
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

        stop_at = time.perf_counter() + min(3.0, seconds / 3)  # warm-up, not recorded
        await asyncio.gather(*[worker(w, False) for w in range(concurrency)])
        started = time.perf_counter()
        stop_at = started + seconds
        await asyncio.gather(*[worker(w, True) for w in range(concurrency)])
        elapsed = time.perf_counter() - started
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"requests": len(latencies), "errors": errors, "rps": len(latencies) / elapsed,
            "texts_per_s": len(latencies) * per_request / elapsed,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def check_vectors(url: str, model: str, texts: list[str], reference: np.ndarray, headers=None) -> float:
    """Largest |difference| between the server's vectors and sentence-transformers' (same model)."""
    import httpx

    r = httpx.post(url, json={"input": texts, "model": model, "encoding_format": "float"}, headers=headers,
                   timeout=120)
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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------- servers
class FastembServer:
    name = "fastemb (Ray Serve)"

    def __init__(self, model_path: str, threads: int, max_batch_size: int):
        self.model_path, self.threads, self.max_batch_size = model_path, threads, max_batch_size

    def __enter__(self):
        from fastemb.serve.run import start
        from fastemb.spec import parse_spec

        port = free_port()
        spec = parse_spec({"job": "serve", "port": port, "blocking": False, "ray": {"num_cpus": self.threads},
                           "production": {"model": self.model_path},
                           "batching": {"max_batch_size": self.max_batch_size, "batch_wait_timeout_s": 0.002},
                           "autoscaling": {"min_replicas": 1, "max_replicas": 1},
                           "replica": {"num_cpus": self.threads},
                           "limits": {"max_inflight_requests": 4096},
                           "feedback_dir": str(ROOT / "bench" / "out" / "serve_ab")})
        start(spec)
        self.base = f"http://127.0.0.1:{port}"
        wait_http(self.base + "/healthz")
        self.url, self.model = self.base + "/v1/embeddings", "fastemb"
        return self

    def __exit__(self, *exc):
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()


class ProcessServer:
    def __init__(self, name: str, cmd: list[str], port: int, health: str, url: str, model: str, env: dict):
        self.name, self.cmd, self.port, self.health, self.url, self.model, self.env = name, cmd, port, health, \
            url, model, env

    def __enter__(self):
        log = open(ROOT / "bench" / "out" / f"{self.name.split()[0].lower()}.log", "w")
        self.proc = subprocess.Popen(self.cmd, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT)
        wait_http(self.health, proc=self.proc)
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def infinity_server(python: str, model_path: str, threads: int, batch: int) -> ProcessServer:
    port = free_port()
    exe = str(Path(python).parent / "infinity_emb")
    cmd = [exe, "v2", "--model-id", model_path, "--served-model-name", "minilm", "--port", str(port),
           "--host", "127.0.0.1", "--engine", "torch", "--device", "cpu", "--batch-size", str(batch),
           "--url-prefix", "/v1", "--no-bettertransformer"]
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}
    return ProcessServer("Infinity", cmd, port, f"http://127.0.0.1:{port}/health",
                         f"http://127.0.0.1:{port}/v1/embeddings", "minilm", env)


def plain_process(model_path: str, threads: int) -> ProcessServer:
    port = free_port()
    cmd = [sys.executable, __file__, "--plain-server", "--port", str(port), "--model", model_path,
           "--threads", str(threads)]
    env = {"OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return ProcessServer("FastAPI+ST", cmd, port, f"http://127.0.0.1:{port}/health",
                         f"http://127.0.0.1:{port}/v1/embeddings", "minilm", env)


# ------------------------------------------------------------------------------------------- main
def workloads() -> dict[str, list[str]]:
    import pyarrow.parquet as pq

    defs = pq.read_table(ROOT / "fastemb" / "datasets" / "wordnet" / "test_corpus.parquet").column("text")
    short = [t for t in defs.to_pylist()[:4000] if t]
    long = [" ".join(short[i:i + 14]) for i in range(0, 2800, 14)]  # ~150-250 tokens each
    return {"short": short, "long": long}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plain-server", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help="model folder (default: the shipped all-MiniLM-L6-v2)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per server (1: multi-threaded OpenMP stalls on a loaded box)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per level")
    ap.add_argument("--levels", default="1,8,32", help="concurrency levels (short texts)")
    ap.add_argument("--long-levels", default="1,8", help="concurrency levels (long texts)")
    ap.add_argument("--per-request", type=int, default=1, help="texts per request")
    ap.add_argument("--batch-size", type=int, default=32, help="server batch size (fastemb and Infinity)")
    ap.add_argument("--infinity-python", default=os.environ.get("INFINITY_PYTHON", "/tmp/fe-venv-infinity/bin/python"))
    ap.add_argument("--servers", default="fastemb,infinity,plain")
    args = ap.parse_args()

    from fastemb.model.encoder import resolve_model_path

    model_path = resolve_model_path(args.model or "all-MiniLM-L6-v2")
    if args.plain_server:
        plain_server(model_path, args.port, args.threads)
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
    if "fastemb" in wanted:
        servers.append(FastembServer(model_path, args.threads, args.batch_size))
    if "infinity" in wanted:
        if Path(args.infinity_python).exists() and shutil.which(str(Path(args.infinity_python).parent / "infinity_emb")):
            servers.append(infinity_server(args.infinity_python, model_path, args.threads, args.batch_size))
        else:
            skipped.append(f"Infinity: no venv at {args.infinity_python}")
    if "plain" in wanted:
        servers.append(plain_process(model_path, args.threads))

    results: dict[str, dict] = {}
    for srv in servers:
        print(f"== {srv.name}", flush=True)
        try:
            with srv:
                diff = check_vectors(srv.url, srv.model, probe, reference)
                rows = {}
                for kind, lv in levels.items():
                    for c in lv:
                        res = asyncio.run(closed_loop(srv.url, srv.model, texts[kind], c, args.seconds,
                                                      args.per_request))
                        rows[(kind, c)] = res
                        print(f"  {kind:5s} c={c:3d}: {res['texts_per_s']:7.1f} texts/s  p50 {res['p50_ms']:7.1f} ms"
                              f"  p99 {res['p99_ms']:7.1f} ms  errors {res['errors']}", flush=True)
                results[srv.name] = {"max_abs_diff_vs_st": diff, "rows": rows}
        except Exception as err:  # noqa: BLE001 - report a peer that could not run, keep the others
            skipped.append(f"{srv.name}: {type(err).__name__}: {err}")
            print(f"  skipped: {err}", flush=True)

    body = report(results, skipped, args)
    print(body)
    if results:
        from bench.results import write_section

        write_section("serve", body)
    return 0


def report(results: dict, skipped: list[str], args) -> str:
    names = list(results)
    lines = [f"Model all-MiniLM-L6-v2 (same folder for every server), CPU, {args.threads} threads per server, "
             f"{args.per_request} text(s) per request, closed loop, {args.seconds:.0f} s measured per level "
             "(after a warm-up). Servers run one after the other in the same run.", ""]
    lines.append("| server | texts | concurrency | texts/s | p50 ms | p99 ms | errors |")
    lines.append("|---|---|---|---|---|---|---|")
    for n in names:
        for (kind, c), r in results[n]["rows"].items():
            lines.append(f"| {n} | {kind} | {c} | {r['texts_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
                         f"| {r['errors']} |")
    fe = results.get("fastemb (Ray Serve)")
    if fe:
        lines += ["", "Ratios (fastemb / peer): throughput, and p99 latency (below 1 = fastemb faster).", "",
                  "| peer | texts | concurrency | throughput ratio | p99 ratio |", "|---|---|---|---|---|"]
        for n in names:
            if n == "fastemb (Ray Serve)":
                continue
            for key, r in results[n]["rows"].items():
                f = fe["rows"].get(key)
                if f:
                    lines.append(f"| {n} | {key[0]} | {key[1]} | {f['texts_per_s'] / max(r['texts_per_s'], 1e-9):.2f}"
                                 f" | {f['p99_ms'] / max(r['p99_ms'], 1e-9):.2f} |")
    lines += ["", "Max |vector - SentenceTransformer.encode| per server: "
              + ", ".join(f"{n}: {results[n]['max_abs_diff_vs_st']:.1e}" for n in names)]
    if skipped:
        lines += ["", "Not measured: " + "; ".join(skipped)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
