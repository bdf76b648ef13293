"""Index-build benchmarks, fastemb side by side with its peer in the same run; figures go to bench/RESULTS.md.

(a) ``embed``: WordNet definitions embedded by fastemb's Ray Data job (encoder actors, ONNX Runtime, length
    bucketing) and by ``SentenceTransformer.encode`` (same model, same total threads) twice: as shipped (torch,
    batch 128) and at its best (its ONNX backend on token-budget-sorted batches, through bench/st_encode.py in a
    venv that has it, ``--st-onnx-python``, default the Infinity venv of bench/serve.py, which holds
    sentence-transformers 3.4 with onnxruntime and optimum). The first ratio is pipeline + engine + batching, the
    second the pipeline alone; each with its spread over the rounds, plus the vectors' cosine agreement.
    ``--gpu-actors N``: on this machine's GPU instead, fastemb's N encoder actors sharing it (``embed.num_gpus``
    1/N, fp16, token budget sized for the GPU) against ``SentenceTransformer.encode`` of the half-precision model
    (batch 512) on the same GPU (bench/gpu.sh).
(b) ``ivfpq``: N vectors of dimension 384 drawn from a Gaussian fitted (mean and covariance) to real MiniLM
    embeddings of WordNet definitions, then L2-normalised; an IVF-PQ index built by fastemb's sharded build
    (train task, parallel add tasks, merge task) vs one faiss process with the same factory string and the same
    number of threads: wall time, recall@10 against exact search, and peak memory of each.

    python bench/index_build.py embed [--n 117659] [--threads 2] [--rounds 3] [--quick] [--gpu-actors 2]
    python bench/index_build.py ivfpq [--n 1000000] [--threads 2]
    python bench/index_build.py quality [--model all-MiniLM-L6-v2|<tuned folder>] [--threads 2]

(quality) On the WordNet test protocol: recall@10 against exact search, nDCG@10 and recall@10 on the labels, of
    compressed indexes at ≥ 16× (≤ 96 B/vector in memory, with re-ranking from memory or from disk) and of 128-d
    PCA/Matryoshka + PQ/SQ codes (the seed's "80 % storage cut keeps ≥ 92 %" claim).
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results import ratio_verdict, spread, write_section  # noqa: E402
from fastemb.data.pairs import WORDNET_DIR  # noqa: E402
from fastemb.index.embed import peak_rss_mb  # noqa: E402
from fastemb.logs import configure as configure_logging  # noqa: E402

log = logging.getLogger("fastemb.bench")
MODEL = {"base": "all-MiniLM-L6-v2", "pooling": None, "normalize": None, "max_length": 64}
MAX_BATCH_TOKENS = 1024


ST_ENCODE = Path(__file__).resolve().parent / "st_encode.py"
ST_ONNX_PYTHON = "/tmp/fe-venv-infinity/bin/python"  # a venv with sentence-transformers and its ONNX backend
GPU_BATCH = 512  # SentenceTransformer.encode's batch on the GPU


@dataclass(frozen=True)
class Peer:
    """A ``SentenceTransformer.encode`` side of the embed benchmark: how bench/st_encode.py runs it, its row, and its
    headline (what fastemb's ratio over it isolates)."""
    label: str
    engine: str
    batching: str
    headline: str
    isolates: str
    verdict_name: str = "sentence-transformers"
    backend: str = "torch"
    device: str = "cpu"
    batch_size: int = 128
    token_budget: bool = False  # batches cut by fastemb's token-budget bucketing (the peer at its best)


ST_TORCH = Peer("`SentenceTransformer.encode`, as shipped", "torch fp32", "batch 128 rows (encode sorts by length)",
                "as shipped", "the pipeline, the engine (ONNX vs torch) and the batching together")
ST_ONNX = Peer("`SentenceTransformer.encode`, at its best",
               "ONNX Runtime fp32 (its `backend=\"onnx\"`, optimum export)",
               f"length-sorted batches of ≤ {MAX_BATCH_TOKENS} padded tokens (fastemb's bucketing)", "at its best",
               "the Ray Data pipeline alone (same engine, same token-budget batches, same threads)",
               "sentence-transformers (ONNX)", backend="onnx", token_budget=True)
ST_GPU = Peer("`SentenceTransformer.encode` on the GPU", "torch fp16 (`.half()`)",
              f"batch {GPU_BATCH} rows (encode sorts by length), after an untimed warm-up", "on the GPU",
              "the pipeline and the batching (torch fp16 on the same GPU both)", device="cuda", batch_size=GPU_BATCH)


def token_budget_batches(texts: list[str]) -> list[list[int]]:
    """The peer at its best: rows sorted by token length and cut into batches of ≤ MAX_BATCH_TOKENS padded tokens,
    with fastemb's own bucketing (fastemb.model.batching.bucket_batches) over the model tokenizer's lengths."""
    from fastemb.model.batching import bucket_batches
    from fastemb.model.encoder import Encoder

    tok = Encoder.load(MODEL["base"]).tokenizer
    lengths = [min(len(ids), MODEL["max_length"]) for ids in tok(texts, truncation=False)["input_ids"]]
    return [idx.tolist() for idx in bucket_batches(lengths, MAX_BATCH_TOKENS)]


def _st_round(texts: list[str], threads: int, python: str, peer: Peer, tmp: str) -> tuple[float, np.ndarray, float]:
    """One timed ``SentenceTransformer.encode`` of ``texts`` in a fresh process of ``python`` (bench/st_encode.py;
    model load not timed): (seconds, vectors in row order, peak RSS)."""
    import json
    import subprocess

    from fastemb.model.encoder import default_model_path

    Path(tmp, "texts.json").write_text(json.dumps(texts))
    out = f"{tmp}/st-{peer.backend}-{peer.device}.npy"
    cmd = [python, str(ST_ENCODE), "--model", default_model_path(), "--texts", f"{tmp}/texts.json",
           "--backend", peer.backend, "--device", peer.device, "--batch-size", str(peer.batch_size),
           "--threads", str(threads), "--max-length", str(MODEL["max_length"]), "--out", out]
    if peer.token_budget:
        Path(tmp, "batches.json").write_text(json.dumps(token_budget_batches(texts)))
        cmd += ["--batches", f"{tmp}/batches.json"]
    subprocess.run(cmd, check=True, cwd=tmp, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    info = json.loads(Path(f"{out}.json").read_text())
    return info["seconds"], np.load(out), info["peak_rss_mb"]


def actor_pool(threads: int, gpu_actors: int = 0) -> dict:
    """fastemb's actor pool: ``threads`` one-thread CPU actors, or ``gpu_actors`` sharing the GPU (fp16, the
    GPU-sized token budget) with the threads split among them."""
    if gpu_actors:
        return {"num_actors": gpu_actors, "threads_per_actor": max(1, threads // gpu_actors),
                "num_gpus": 1 / gpu_actors, "batch_rows": 8192}
    return {"num_actors": threads, "threads_per_actor": 1, "max_batch_tokens": MAX_BATCH_TOKENS}


def _fe_round(table: pa.Table, tmp: str, pool: dict) -> tuple[float, pa.Table, float]:
    """One timed fastemb Ray Data embedding job of ``table`` by the actor ``pool`` (actor start included);
    (wall, id+vector, RSS)."""
    from fastemb.index.corpus import scan_corpus
    from fastemb.index.embed import embed_corpus, shard_files

    pq.write_table(table, f"{tmp}/corpus.parquet")
    t = time.perf_counter()
    emb = embed_corpus(scan_corpus(f"{tmp}/corpus.parquet"), f"{tmp}/emb", MODEL, rows_per_unit=10**9, **pool)
    wall = time.perf_counter() - t
    shards = pa.concat_tables([pq.read_table(f, columns=["id", "vector"]) for f in shard_files(emb["shard_dirs"])])
    return wall, shards, emb["worker_peak_rss_mb"]


def bench_embed(n: int | None, threads: int, rounds: int = 2, st_onnx_python: str = ST_ONNX_PYTHON,
                gpu_actors: int = 0) -> None:
    """The corpus is cut into ``rounds`` slices; each slice is embedded by every side back to back, the order rotating
    between rounds, so that load drift on a shared machine hits all alike. fastemb pays its actor start once per
    round. Sides: fastemb; ``SentenceTransformer.encode`` as shipped (torch, batch 128); and, where ``st_onnx_python``
    exists, the peer at its best (its ONNX backend, token-budget-sorted batches). ``gpu_actors``: fastemb and
    ``encode`` both on the GPU in fp16 (see the module docstring)."""
    import ray

    from fastemb.index.shards import vectors_of
    from fastemb.ray_env import init_ray

    table = pq.read_table(WORDNET_DIR / "all_definitions.parquet")
    table = table.slice(0, n) if n else table
    pool = actor_pool(threads, gpu_actors)
    if gpu_actors:
        peers = {"st-gpu": (sys.executable, ST_GPU)}  # its ONNX backend runs on CPU only: no ONNX peer here
    else:
        peers = {"st-torch": (sys.executable, ST_TORCH)}
        if Path(st_onnx_python).exists():
            peers["st-onnx"] = (st_onnx_python, ST_ONNX)
        else:
            log.warning(f"{st_onnx_python} not found: no sentence-transformers ONNX row (see bench/serve.py for the "
                        "venv)")
    init_ray(num_cpus=threads)
    sides = ["fastemb", *peers]
    secs = {k: [] for k in sides}
    rss = {k: 0.0 for k in sides}
    cos, orders = {k: [] for k in peers}, []
    bounds = np.linspace(0, table.num_rows, rounds + 1).astype(int)
    for r, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        part = table.slice(lo, hi - lo)
        texts = part.column("text").to_pylist()
        order = sides[r % len(sides):] + sides[:r % len(sides)]
        orders.append(" → ".join(order))
        out = {}
        with tempfile.TemporaryDirectory() as tmp:
            for side in order:
                if side == "fastemb":
                    out[side] = _fe_round(part, tmp, pool)
                else:
                    out[side] = _st_round(texts, threads, *peers[side], tmp)
        for side in sides:
            secs[side].append(out[side][0])
            rss[side] = max(rss[side], out[side][2])
        fe = out["fastemb"][1]
        pos = {d: i for i, d in enumerate(part.column("id").to_pylist())}
        rows = [pos[d] for d in fe.column("id").to_pylist()]
        for side in peers:
            cos[side].append(np.sum(vectors_of(fe) * out[side][1][rows], axis=1))
        print(f"round {r + 1} ({orders[-1]}, {len(texts):,} docs): "
              + ", ".join(f"{k} {out[k][0]:.1f}s" for k in sides), flush=True)
    ray.shutdown()
    n_docs = table.num_rows
    rate = {k: n_docs / sum(v) for k, v in secs.items()}
    ratios = {k: [p / f for f, p in zip(secs["fastemb"], secs[k])] for k in peers}  # same docs: docs/s ratio
    if gpu_actors:
        import torch

        where = f", on one {torch.cuda.get_device_name()}, fp16 on both sides"
        fe_cells = ("torch fp16 on the GPU (backend auto)", "length buckets under the GPU-sized token budget",
                    f"{gpu_actors} actors × {1 / gpu_actors:g} GPU, {pool['threads_per_actor']} thread(s) each")
    else:
        where = ""
        fe_cells = ("ONNX Runtime fp32 (backend auto)", f"length buckets of ≤ {MAX_BATCH_TOKENS} padded tokens",
                    f"{threads} actors × 1 thread")
    rows = [f"| fastemb Ray Data job (incl. actor start and parquet write) | {' | '.join(fe_cells)} | "
            f"{sum(secs['fastemb']):.1f} | {rate['fastemb']:.0f} | {rss['fastemb']:.0f} (per actor) | – |"]
    headline = []
    for k, (_, peer) in peers.items():
        thr = f"{threads} {'intra-op' if peer.backend == 'onnx' else 'torch'} threads, one process"
        rows.append(f"| {peer.label} (model load not timed) | {peer.engine} | {peer.batching} | {thr} | "
                    f"{sum(secs[k]):.1f} | {rate[k]:.0f} | {rss[k]:.0f} (process) | {spread(ratios[k], 2, 'rounds')} |")
        headline.append(f"**fastemb / sentence-transformers {peer.headline}: {rate['fastemb'] / rate[k]:.2f}×**: "
                        f"{peer.isolates}; " + ratio_verdict(ratios[k], "fastemb", peer.verdict_name) + ".")
    agree = "; ".join(f"{k}: min {np.concatenate(c).min():.5f}, mean {np.concatenate(c).mean():.6f}"
                      for k, c in cos.items())
    body = f"""Corpus: {n_docs:,} WordNet definitions{'' if not n else ' (first N of 117,659)'}; model all-MiniLM-L6-v2,
max_length 64; {threads} threads in total for each side{where}. The corpus is run in {rounds} slices, every side back to
back on each slice, order rotating (rounds: {'; '.join(orders)}). Ratio column: fastemb's docs/s over the peer's,
per round, mean ± std.

| system | engine | batch policy | threads | wall (s) | docs/s | peak RSS (MiB) | ratio per round |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

{chr(10).join(headline)}
Vectors agree (cosine between fastemb's and each peer's embeddings): {agree}.
"""
    print(body)
    write_section("index_build (a): corpus embedding throughput on GPU (issue 23)" if gpu_actors
                  else "index_build (a): corpus embedding throughput", body)


def synthetic_vectors(n: int, out_dir: Path, shard_rows: int = 100_000, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Embedding shards of ``n`` vectors matching real MiniLM statistics, and 1,000 held-out query vectors."""
    from fastemb.model.encoder import Encoder

    texts = pq.read_table(WORDNET_DIR / "all_definitions.parquet").column("text").to_pylist()[:4000]
    real = Encoder.load("all-MiniLM-L6-v2", max_length=64).encode(texts, batch_size=128)
    mean, cov = real.mean(0), np.cov(real, rowvar=False)
    chol = np.linalg.cholesky(cov + 1e-6 * np.eye(cov.shape[0]))
    rng = np.random.default_rng(seed)

    def draw(k: int) -> np.ndarray:
        x = (mean + rng.standard_normal((k, len(mean))) @ chol.T).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for s in range(0, n, shard_rows):
        k = min(shard_rows, n - s)
        x = draw(k)
        f = out_dir / f"shard-{s // shard_rows:05d}.parquet"
        pq.write_table(pa.table({"id": [str(i) for i in range(s, s + k)], "chunk": pa.array(np.zeros(k, np.int32)),
                                 "skip": pa.nulls(k, pa.string()),
                                 "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])}), f)
        files.append(str(f))
    return files, draw(1000)


def _single_faiss(files: list[str], factory: str, train_size: int, threads: int, queries: np.ndarray, q) -> None:
    """The peer: one faiss process reads every vector, trains on the same sample size, adds, searches."""
    import faiss

    from fastemb.index.factory import set_search_params
    from fastemb.index.shards import sample_vectors, vectors_of

    faiss.omp_set_num_threads(threads)
    t = time.perf_counter()
    counts = [pq.read_metadata(f).num_rows for f in files]
    x = sample_vectors(files, counts, {}, train_size)
    index = faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    for f in files:
        index.add(vectors_of(pq.read_table(f, columns=["vector"])))
    wall = time.perf_counter() - t
    set_search_params(index, nprobe=32)
    q.put((wall, index.search(queries, 10)[1], peak_rss_mb()))


def _exact(files: list[str], queries: np.ndarray, k: int = 10) -> np.ndarray:
    import faiss

    from fastemb.index.shards import vectors_of

    res = faiss.ResultHeap(len(queries), k, keep_max=True)
    offset = 0
    for f in files:
        x = vectors_of(pq.read_table(f, columns=["vector"]))
        d, i = faiss.knn(queries, x, k, metric=faiss.METRIC_INNER_PRODUCT)
        res.add_result(d, i + offset)
        offset += len(x)
    res.finalize()
    return res.I


def _warm_workers(threads: int) -> None:
    """Start one Ray worker per CPU and import the build module in it, so that no timed build pays for worker
    start-up and imports (the peer's process start and imports are not timed either)."""
    import ray

    @ray.remote(num_cpus=1)
    def ready() -> int:
        import fastemb.index.build  # noqa: F401

        return os.getpid()

    ray.get([ready.remote() for _ in range(threads)])


def _one_process_round(files: list[str], factory: str, train_size: int, threads: int, queries: np.ndarray):
    """One timed build by the peer in a fresh process: (wall, top-10 ids, peak RSS)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_single_faiss, args=(files, factory, train_size, threads, queries, q))
    p.start()
    out = q.get()
    p.join()
    return out


def bench_ivfpq(n: int, threads: int, train_size: int = 100_000, nlist: int | None = None, rounds: int = 2) -> None:
    import faiss
    import ray

    from fastemb.index.build import build_index
    from fastemb.index.evaluate import recall_at_k
    from fastemb.compress.pq import pq_factory
    from fastemb.index.factory import default_nlist, set_search_params
    from fastemb.ray_env import init_ray

    with tempfile.TemporaryDirectory() as tmp:
        files, queries = synthetic_vectors(n, Path(tmp) / "shards")
        factory = f"IVF{nlist or default_nlist(n)},{pq_factory(384, 48)}"
        truth = _exact(files, queries)
        counts = [pq.read_metadata(f).num_rows for f in files]
        init_ray(num_cpus=threads)
        _warm_workers(threads)
        rss0 = peak_rss_mb()
        one, fe, driver_rss = [], [], 0.0
        for r in range(rounds):  # alternate which system goes first, so drift in machine load hits both
            order = ["one", "fe"] if r % 2 == 0 else ["fe", "one"]
            for who in order:
                if who == "one":
                    one.append(_one_process_round(files, factory, train_size, threads, queries))
                    continue
                out = Path(tmp) / f"fastemb-{r}"
                t = time.perf_counter()
                info = build_index(files, counts, {}, out, "ivf_pq", factory, train_size=train_size)
                fe.append((time.perf_counter() - t, info))
                driver_rss = driver_rss or peak_rss_mb()  # the first build's, before any index is read here
                index = faiss.read_index(str(out / "index.faiss"))
                set_search_params(index, nprobe=32)
                fe_I = index.search(queries, 10)[1]
                del index
                shutil.rmtree(out)
            log.info(f"round {r + 1}: one process {one[-1][0]:.1f}s, fastemb {fe[-1][0]:.1f}s")
        ray.shutdown()
    one_s = statistics.median(o[0] for o in one)
    fe_s = statistics.median(f[0] for f in fe)
    info = fe[-1][1]
    r_fe = recall_at_k([list(r) for r in fe_I], [list(r) for r in truth])
    r_one = recall_at_k([list(r) for r in one[-1][1]], [list(r) for r in truth])
    rounds_txt = ", ".join(f"{o[0]:.1f} / {f[0]:.1f}" for o, f in zip(one, fe))
    body = f"""{n:,} vectors × 384, **drawn from a Gaussian fitted to real MiniLM embeddings** of 4,000 WordNet
definitions (mean + full covariance), L2-normalised; 1,000 held-out query vectors from the same law.
Factory `{factory}` (48 B codes), trained on {min(n, train_size):,} sampled vectors, inner product, nprobe 32;
{threads} threads in total for each system. {rounds} rounds, alternating which system goes first; wall is the
median. Neither side's process start or imports are timed (the peer runs in a fresh process and starts its clock
after importing faiss; fastemb's Ray workers are started and have imported the build module before the first build).

| build | wall (s), median | recall@10 vs exact | peak RSS (MiB) |
|---|---|---|---|
| one faiss process ({threads} OpenMP threads) | {one_s:.1f} | {r_one:.4f} | {max(o[2] for o in one):.0f} |
| fastemb sharded (train task → {info['add_tasks']} add tasks → merge task) | {fe_s:.1f} | {r_fe:.4f} | driver +{driver_rss - rss0:.0f} during the first build (total {driver_rss:.0f}, incl. the encoder used to fit the statistics), largest worker {max(f[1]['worker_peak_rss_mb'] for f in fe):.0f} |

Rounds (one process / fastemb, s): {rounds_txt}.

**Wall-time ratio fastemb / one process: {fe_s / one_s:.2f}×** (target ≤ 1.2×). fastemb's last build: train
{info['train_s']:.1f}s, add {info['add_s']:.1f}s, merge {info['merge_s']:.1f}s.
"""
    print(body)
    write_section("index_build (b): sharded IVF-PQ build vs one faiss process", body)


def _eval_embeddings(model: str, threads: int, cache_dir: Path) -> tuple[object, np.ndarray, np.ndarray]:
    """The WordNet test protocol (2,000 queries × 20,000 definitions) embedded once by ``model`` (cached)."""
    import hashlib

    import torch

    from fastemb.data.eval_sets import load_eval_set
    from fastemb.model.encoder import Encoder, resolve_model_path

    data = load_eval_set("wordnet", "test")
    path = Path(resolve_model_path(model))
    key = hashlib.sha1(f"{path}:{max(f.stat().st_mtime_ns for f in path.rglob('*') if f.is_file())}".encode())
    cache = cache_dir / f"quality-emb-{key.hexdigest()[:12]}.npz"
    if cache.exists():
        with np.load(cache) as z:
            return data, z["corpus"], z["queries"]
    torch.set_num_threads(threads)
    enc = Encoder.load(model).eval()
    corpus, queries = enc.encode(data.corpus, batch_size=128), enc.encode(data.queries, batch_size=128)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, corpus=corpus, queries=queries)
    return data, corpus, queries


def bench_quality(model: str, threads: int, k_factor: int = 10, nprobe: int = 128) -> None:
    """Recall@10 vs exact and label metrics of compressed indexes on the WordNet test protocol."""
    import faiss

    from fastemb.compress import make_compressor
    from fastemb.compress.pq import pq_factory
    from fastemb.eval.retrieval import exact_search, metrics_of_hits
    from fastemb.index.evaluate import recall_at_k
    from fastemb.index.factory import code_bytes, default_nlist, factory_string, set_search_params
    from fastemb.index.refine import STORE_FILE, open_store, rerank_from_disk

    # Nothing here is timed: one OpenMP thread, since OpenMP barriers crawl on a shared, oversubscribed machine.
    faiss.omp_set_num_threads(1)
    data, xb, xq = _eval_embeddings(model, threads, Path(__file__).resolve().parent / "out")
    n, d = xb.shape
    full = 4 * d
    _, truth = exact_search(xq, xb, 100)
    exact = metrics_of_hits(truth, data)
    rows: list[dict] = []

    def record(name: str, idx: np.ndarray, mem_b: float, disk_b: float = 0.0, note: str = "") -> None:
        m = metrics_of_hits(idx, data)
        rows.append({"name": name, "mem": mem_b, "disk": disk_b, "note": note,
                     "r_exact": recall_at_k([list(r) for r in idx], [list(r) for r in truth]),
                     "ndcg": m["ndcg@10"], "recall": m["recall@10"]})

    def faiss_search(index, x: np.ndarray, k: int = 100) -> np.ndarray:
        set_search_params(index, nprobe=nprobe, k_factor=k_factor)
        return index.search(np.ascontiguousarray(x), k)[1]

    nlist = default_nlist(n)
    # OPQ is left out: its training (40 + 50×4 PQ k-means rounds) takes far too long on this shared 2-core machine;
    # IVF-PQ encodes residuals, and with 4-d sub-vectors (96 B) a rotation gains little.
    # ---- target 1: ≤ 96 B per vector in memory (16×), re-ranking --------------------------------------------
    for b in (96, 48):
        for kind in ("pq", "ivf_pq"):  # exhaustive PQ scan, and IVF (nprobe of nlist lists) in front of it
            key = factory_string(kind, d, n, nlist=nlist, bytes_per_vector=b)
            base = faiss.index_factory(d, key, faiss.METRIC_INNER_PRODUCT)
            base.train(xb)
            trained = faiss.clone_index(base)  # empty, trained: the base of the refine variants below
            base.add(xb)
            record(f"`{key}` (ADC, no re-rank)", faiss_search(base, xq), code_bytes(base))
            cand = faiss_search(base, xq, 10 * k_factor)
            with tempfile.TemporaryDirectory() as tmp:  # the file index.refine=disk writes next to the index
                store = open_store(f"{tmp}/{STORE_FILE}", d, n, mode="w+")
                store[:] = xb
                store.flush()
                store = open_store(f"{tmp}/{STORE_FILE}", d)
                record(f"`{key}` + re-rank top {10 * k_factor} with fp16 vectors read from disk (memmap)",
                       rerank_from_disk(cand, xq, store, 10)[1], code_bytes(base), 2 * d)
                del store
        # in-memory refine variants of the IVF index (the last `trained` above)
        for refine in ("flat", "sqfp16", "sq8"):
            # the same structure as factory_string(..., refine=refine), on the already trained base index
            key_r = factory_string("ivf_pq", d, n, nlist=nlist, bytes_per_vector=b, refine=refine)
            parts = [faiss.clone_index(trained)]  # Python keeps the sub-indexes alive
            if refine == "flat":
                idx = faiss.IndexRefineFlat(parts[0])
            else:
                parts.append(faiss.index_factory(d, {"sqfp16": "SQfp16", "sq8": "SQ8"}[refine],
                                                 faiss.METRIC_INNER_PRODUCT))
                parts[1].train(xb)
                idx = faiss.IndexRefine(parts[0], parts[1])
            idx.add(xb)
            record(f"`{key_r}` (index.refine={refine}, re-rank top {10 * k_factor} in memory)",
                   faiss_search(idx, xq), code_bytes(idx))
    # IVF-PQ with residual re-ranking codes (IndexIVFPQR, Jégou et al. 2011): 48 B search code + 48 B refine code,
    # all in memory. faiss implements it for L2 only: on unit vectors L2 and cosine rank identically.
    key = f"IVF{nlist},PQ48+48"  # (IVFPQR does no polysemous training)
    pqr = faiss.index_factory(d, key, faiss.METRIC_L2)
    pqr.train(xb)
    pqr.add(xb)
    set_search_params(pqr, nprobe=nprobe)
    faiss.downcast_index(pqr).k_factor = float(k_factor)
    record(f"`{key}` (residual re-rank codes, L2 on unit vectors; faiss only, not an index.type)",
           pqr.search(xq, 100)[1], 96)
    # ---- the seed's claim: 128 dimensions + PQ/SQ, ≥ 80 % storage cut ---------------------------------------------
    for method in ("pca", "matryoshka"):
        comp = make_compressor(method, d, 128).fit(xb)
        cb, cq = comp.transform(xb), comp.transform(xq)
        record(f"{method} 384→128, float32", exact_search(cq, cb, 100)[1], 4 * 128)
        for key, nb in (("SQ8", 128), (pq_factory(128, 64), 64), (pq_factory(128, 32), 32)):
            idx = faiss.index_factory(128, key, faiss.METRIC_INNER_PRODUCT)
            idx.train(cb)
            idx.add(cb)
            record(f"{method} 384→128 + `{key}`", faiss_search(idx, cq), nb)
    _quality_report(model, rows, exact, full, n, len(xq), nlist, nprobe, k_factor)


def _quality_report(model: str, rows: list[dict], exact: dict, full: int, n: int, nq: int, nlist: int, nprobe: int,
                    k_factor: int) -> None:
    lines = ["| configuration | bytes/vector in memory | + on disk for re-rank | compression (memory) | "
             "storage cut (memory) | recall@10 vs exact | nDCG@10 (kept) | recall@10 labels (kept) |",
             "|---|---|---|---|---|---|---|---|",
             f"| exact search, float32 | {full} | – | 1× | 0 % | 1.0000 | {exact['ndcg@10']:.4f} (100 %) | "
             f"{exact['recall@10']:.4f} (100 %) |"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['mem']:.0f} | {r['disk'] or '–'} | {full / r['mem']:.0f}× | "
                     f"{100 * (1 - r['mem'] / full):.1f} % | {r['r_exact']:.4f} | {r['ndcg']:.4f} "
                     f"({100 * r['ndcg'] / exact['ndcg@10']:.1f} %) | {r['recall']:.4f} "
                     f"({100 * r['recall'] / exact['recall@10']:.1f} %) |")
    t1 = [r for r in rows if r["mem"] <= full / 16]
    best_mem = max((r for r in t1 if not r["disk"]), key=lambda r: r["r_exact"])
    best_disk = max((r for r in t1 if r["disk"]), key=lambda r: r["r_exact"], default=None)
    in_ram_refine = max((r["r_exact"] for r in rows if "in memory)" in r["name"]), default=float("nan"))
    seed = [r for r in rows if "128" in r["name"] and r["mem"] <= 0.2 * full]
    best_seed = max(seed, key=lambda r: r["ndcg"])
    verdict = lambda ok: "**met**" if ok else "**not met**"  # noqa: E731
    body = f"""WordNet test protocol: {nq:,} queries × {n:,} definitions, model `{model}` (384-d, float32 = {full} B).
Recall@10 vs exact = overlap of the top 10 with exact float32 search; nDCG@10 and recall@10 on the labels, with the
share kept of exact search's figure. IVF: {nlist} lists, nprobe {nprobe}; re-ranking fetches {10 * k_factor}
candidates (k_factor {k_factor}). Compressors and quantizers are fitted on the corpus vectors. "Bytes in memory"
counts the codes (+ in-memory refine codes), not the 8 B id per IVF entry.

{chr(10).join(lines)}

**Target 1 (≥ 16×, i.e. ≤ 96 B in memory, recall@10 vs exact ≥ 0.95 with re-ranking):**
- everything in memory within 96 B: best is {best_mem['name']} with recall@10 {best_mem['r_exact']:.4f}:
  {verdict(best_mem['r_exact'] >= 0.95)};
- 96 B in memory + full vectors kept on disk for re-ranking: """ + (
        f"""{best_disk['name']} reaches {best_disk['r_exact']:.4f}: {verdict(best_disk['r_exact'] >= 0.95)}
  (the re-rank reads {10 * k_factor} × {best_disk['disk']} B per query from disk). The in-memory refine rows above
  (IVF-based) reach at best {in_ram_refine:.4f} and hold the refine codes in RAM (counted in the memory column)."""
        if best_disk else "none measured") + f"""

**Seed's claim ("768→128 + PQ cuts storage by 80 % and keeps ≥ 92 % of retrieval accuracy"), on our 384-d model:**
at ≥ 80 % storage cut the best 128-d configuration is {best_seed['name']} ({best_seed['mem']:.0f} B,
{100 * (1 - best_seed['mem'] / full):.1f} % cut): it keeps {100 * best_seed['ndcg'] / exact['ndcg@10']:.1f} % of nDCG@10
and {100 * best_seed['recall'] / exact['recall@10']:.1f} % of recall@10 (labels): ≥ 92 % {verdict(best_seed['ndcg'] >= 0.92 * exact['ndcg@10'])}.
Matryoshka truncation is measured too, but all-MiniLM-L6-v2 was not trained with a Matryoshka loss.
"""
    print(body)
    write_section("index_build: compression quality targets", body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", choices=["embed", "ivfpq", "quality"])
    ap.add_argument("--model", default="all-MiniLM-L6-v2", help="quality: the model (alias or tuned folder)")
    ap.add_argument("--n", type=int, default=None, help="documents (embed, default all) or vectors (ivfpq, 1M)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="embed: slices; ivfpq: builds of each system; run in alternating order")
    ap.add_argument("--nlist", type=int, default=None, help="ivfpq: IVF lists (default ~4*sqrt(N))")
    ap.add_argument("--st-onnx-python", default=ST_ONNX_PYTHON,
                    help="embed: a Python with sentence-transformers and its ONNX backend (the peer at its best)")
    ap.add_argument("--quick", action="store_true", help="embed: 2,000 documents, 3 rounds: a smoke run")
    ap.add_argument("--gpu-actors", type=int, default=0, help="embed: N encoder actors sharing this machine's GPU "
                    "against SentenceTransformer.encode on it (fp16 both)")
    a = ap.parse_args()
    configure_logging()
    if a.which == "embed":
        if a.quick:
            a.n, a.rounds = 2000, 3
        bench_embed(a.n, a.threads, a.rounds, a.st_onnx_python, a.gpu_actors)
    elif a.which == "quality":
        bench_quality(a.model, a.threads)
    else:
        bench_ivfpq(a.n or 1_000_000, a.threads, nlist=a.nlist, rounds=a.rounds)


if __name__ == "__main__":
    main()
