"""Index-build benchmarks, fastemb side by side with its peer in the same run; figures go to bench/RESULTS.md.

(a) ``embed``: WordNet definitions embedded by fastemb's Ray Data job (encoder actors, length bucketing) and by
    ``SentenceTransformer.encode`` (same model, same total threads, batch 128): docs/s and the ratio, plus the
    cosine agreement of the two sets of vectors.
(b) ``ivfpq``: N vectors of dimension 384 drawn from a Gaussian fitted (mean and covariance) to real MiniLM
    embeddings of WordNet definitions, then L2-normalised; an IVF-PQ index built by fastemb's sharded build
    (train task, parallel add tasks, merge task) vs one faiss process with the same factory string and the same
    number of threads: wall time, recall@10 against exact search, and peak memory of each.

    python bench/index_build.py embed [--n 117659] [--threads 2]
    python bench/index_build.py ivfpq [--n 1000000] [--threads 2]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results import write_section  # noqa: E402
from fastemb.data.pairs import WORDNET_DIR  # noqa: E402
from fastemb.index.embed import peak_rss_mb  # noqa: E402

MODEL = {"base": "all-MiniLM-L6-v2", "pooling": None, "normalize": None, "max_length": 64}


def _st_encode(texts: list[str], threads: int, q) -> None:
    """The peer, in its own process so that its threads and memory are its own."""
    import torch
    from sentence_transformers import SentenceTransformer

    from fastemb.model.encoder import default_model_path

    torch.set_num_threads(threads)
    model = SentenceTransformer(default_model_path(), device="cpu")
    model.max_seq_length = MODEL["max_length"]
    t = time.perf_counter()
    emb = model.encode(texts, batch_size=128, convert_to_numpy=True, normalize_embeddings=True)
    q.put((time.perf_counter() - t, emb, peak_rss_mb()))


def bench_embed(n: int | None, threads: int) -> None:
    import ray

    from fastemb.index.corpus import scan_corpus
    from fastemb.index.embed import embed_corpus, shard_files
    from fastemb.index.shards import vectors_of
    from fastemb.ray_env import init_ray

    table = pq.read_table(WORDNET_DIR / "all_definitions.parquet")
    table = table.slice(0, n) if n else table
    texts = table.column("text").to_pylist()
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(table, f"{tmp}/corpus.parquet")
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        p = ctx.Process(target=_st_encode, args=(texts, threads, q))
        p.start()
        st_s, st_emb, st_rss = q.get()
        p.join()
        init_ray(num_cpus=threads)
        t = time.perf_counter()
        emb = embed_corpus(scan_corpus(f"{tmp}/corpus.parquet"), f"{tmp}/emb", MODEL, num_actors=threads,
                           threads_per_actor=1, rows_per_unit=10**9, log=lambda *_: None)
        fe_s = time.perf_counter() - t
        shards = [pq.read_table(f, columns=["id", "vector"]) for f in shard_files(emb["shard_dirs"])]
        ray.shutdown()
    ids = [i for s in shards for i in s.column("id").to_pylist()]
    vec = np.concatenate([vectors_of(s) for s in shards])
    pos = {d: i for i, d in enumerate(table.column("id").to_pylist())}
    cos = np.sum(vec * st_emb[[pos[d] for d in ids]], axis=1)
    fe_rate, st_rate = len(texts) / fe_s, len(texts) / st_s
    body = f"""Corpus: {len(texts):,} WordNet definitions{'' if not n else ' (first N of 117,659)'}; model all-MiniLM-L6-v2,
max_length 64; {threads} threads in total for each system.

| system | wall (s) | docs/s | peak RSS (MiB) |
|---|---|---|---|
| `SentenceTransformer.encode` (batch 128, {threads} torch threads) | {st_s:.1f} | {st_rate:.0f} | {st_rss:.0f} (process) |
| fastemb Ray Data job ({threads} actors × 1 thread, token-budget buckets; incl. actor start) | {fe_s:.1f} | {fe_rate:.0f} | {emb['worker_peak_rss_mb']:.0f} (per actor) |

**Ratio fastemb / sentence-transformers: {fe_rate / st_rate:.2f}×** (target ≥ 1.5×).
Vectors agree: cosine between the two systems' embeddings min {cos.min():.5f}, mean {cos.mean():.6f}.
"""
    print(body)
    write_section("index_build (a): corpus embedding throughput", body)


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


def bench_ivfpq(n: int, threads: int, train_size: int = 100_000) -> None:
    import faiss
    import ray

    from fastemb.index.build import build_index
    from fastemb.index.evaluate import recall_at_k
    from fastemb.index.factory import default_nlist, set_search_params
    from fastemb.ray_env import init_ray

    with tempfile.TemporaryDirectory() as tmp:
        files, queries = synthetic_vectors(n, Path(tmp) / "shards")
        factory = f"IVF{default_nlist(n)},PQ48"
        truth = _exact(files, queries)
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        p = ctx.Process(target=_single_faiss, args=(files, factory, train_size, threads, queries, q))
        p.start()
        one_s, one_I, one_rss = q.get()
        p.join()
        init_ray(num_cpus=threads)
        counts = [pq.read_metadata(f).num_rows for f in files]
        rss0 = peak_rss_mb()
        t = time.perf_counter()
        info = build_index(files, counts, {}, Path(tmp) / "fastemb", "ivf_pq", factory, train_size=train_size,
                           log=lambda *_: None)
        fe_s = time.perf_counter() - t
        driver_rss = peak_rss_mb()
        ray.shutdown()
        index = faiss.read_index(str(Path(tmp) / "fastemb" / "index.faiss"))
        set_search_params(index, nprobe=32)
        fe_I = index.search(queries, 10)[1]
    r_fe = recall_at_k([list(r) for r in fe_I], [list(r) for r in truth])
    r_one = recall_at_k([list(r) for r in one_I], [list(r) for r in truth])
    body = f"""{n:,} vectors × 384, **drawn from a Gaussian fitted to real MiniLM embeddings** of 4,000 WordNet
definitions (mean + full covariance), L2-normalised; 1,000 held-out query vectors from the same law.
Factory `{factory}` (48 B codes), trained on {min(n, train_size):,} sampled vectors, inner product, nprobe 32;
{threads} threads in total for each system.

| build | wall (s) | recall@10 vs exact | peak RSS (MiB) |
|---|---|---|---|
| one faiss process ({threads} OpenMP threads) | {one_s:.1f} | {r_one:.4f} | {one_rss:.0f} |
| fastemb sharded (train task → {info['add_tasks']} add tasks → merge task) | {fe_s:.1f} | {r_fe:.4f} | driver +{driver_rss - rss0:.0f} during the build (total {driver_rss:.0f}, incl. the encoder used to fit the statistics), largest worker {info['worker_peak_rss_mb']:.0f} |

**Wall-time ratio fastemb / one process: {fe_s / one_s:.2f}×** (target ≤ 1.2×). fastemb: train {info['train_s']:.1f}s,
add {info['add_s']:.1f}s, merge {info['merge_s']:.1f}s.
"""
    print(body)
    write_section("index_build (b): sharded IVF-PQ build vs one faiss process", body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", choices=["embed", "ivfpq"])
    ap.add_argument("--n", type=int, default=None, help="documents (embed, default all) or vectors (ivfpq, 1M)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    if a.which == "embed":
        bench_embed(a.n, a.threads)
    else:
        bench_ivfpq(a.n or 1_000_000, a.threads)


if __name__ == "__main__":
    main()
