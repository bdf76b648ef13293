"""Binary embeddings with re-scoring: fastemb's ``index.type: binary`` against sentence-transformers' binary search.

The WordNet test protocol (2,000 queries × 20,000 definitions, all-MiniLM-L6-v2, 384-d unit vectors) is embedded once
(bench/index_build.py's cache in bench/out/). In the same run:

- fastemb, through its own build (``fastemb.index.stages.index_shards``: the Ray train/add/merge tasks, the refine
  store, the manifest) and its ``Searcher``: exact flat float32; binary (48 B/vector) without re-scoring; binary +
  re-scoring from float16 vectors on disk; binary + re-scoring from int8 vectors on disk (per-dimension scales);
- the peer, sentence-transformers' binary path: ``quantize_embeddings(corpus, precision="ubinary")`` in a faiss
  ``IndexBinaryFlat`` searched by ``semantic_search_faiss(..., corpus_precision="ubinary", rescore=True,
  rescore_multiplier=k_factor)``, which re-scores the candidates with the float query against their *binary* vectors
  (it keeps no other copy of the corpus).

Recall@10 against exact search, nDCG@10 on the labels, bytes per vector in memory and on disk, and one-query-at-a-time
latency p50/p99 (one thread; query encoding excluded), at ``--k-factor`` and over a small k_factor sweep. Figures go to
bench/RESULTS.md (``--quick``: 200 queries, printed only unless FASTEMB_BENCH_RESULTS names another file).

    .venv/bin/python bench/binary_index.py [--quick] [--k-factor 20] [--sweep 5,10,20,30,40] [--latency-queries 200]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.index_build import _eval_embeddings  # noqa: E402
from bench.results import ratio_verdict, spread, write_section  # noqa: E402
from fastemb.logs import configure as configure_logging  # noqa: E402

log = logging.getLogger("fastemb.bench")
SECTION = "binary_index: binary embeddings with re-scoring (index.type binary) vs sentence-transformers"
OUT = ROOT / "bench" / "out" / "binary"
CONFIGS = {  # name → index section
    "exact": {"type": "flat", "refine": "none"},
    "binary": {"type": "binary", "refine": "none"},
    "binary + fp16 disk": {"type": "binary", "refine": "disk", "refine_dtype": "float16"},
    "binary + int8 disk": {"type": "binary", "refine": "disk", "refine_dtype": "int8"},
}


def write_shard(xb: np.ndarray, ids: list[str], texts: list[str], folder: Path) -> list[str]:
    """The corpus vectors as one embedding shard (the columns fastemb/index/embed.py writes)."""
    folder.mkdir(parents=True, exist_ok=True)
    d = xb.shape[1]
    vec = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(xb, np.float32).reshape(-1)), d)
    pq.write_table(pa.table({"id": pa.array(ids, pa.string()), "chunk": pa.array([0] * len(ids), pa.int32()),
                             "text": pa.array(texts, pa.string()), "thash": pa.array(range(len(ids)), pa.int64()),
                             "skip": pa.array([None] * len(ids), pa.string()), "vector": vec}),
                   folder / "part-00000.parquet")
    return [str(folder)]


def build_fastemb(shard_dirs: list[str], k_factor: int) -> dict:
    """Each configuration built by fastemb's index stage into OUT/<n>, with the manifest its Searcher reads."""
    from fastemb.index.searcher import Searcher
    from fastemb.index.stages import index_shards
    from fastemb.spec import CompressSpec, IndexJob, IndexSpec

    built = {}
    for n, (name, section) in enumerate(CONFIGS.items()):
        spec = IndexJob(name="binary-bench", index=IndexSpec(**section, k_factor=k_factor, train_size=20_000))
        out = OUT / f"config-{n}"
        shutil.rmtree(out, ignore_errors=True)
        info = index_shards(shard_dirs, set(), out, spec.index, CompressSpec(), on_this_node=True,
                            log_level=logging.DEBUG)
        (out / "manifest.json").write_text(json.dumps({"config": spec.model_dump(mode="json")}))
        built[name] = {"searcher": Searcher(out, encoder=object()), "info": info}  # vectors in: no encoder needed
    return built


def fastemb_run(searcher, xq: np.ndarray, k_factor: int, lat_q: int) -> tuple[np.ndarray, float, float]:
    """Top-10 rows of every query, and p50/p99 (ms) of one-query searches, at ``k_factor``."""
    from fastemb.index.evaluate import latency_ms

    searcher.k_factor = k_factor
    rows = np.array([[r for _, _, r in hits] for hits in searcher.search_vectors(xq, 10)])
    return rows, *latency_ms(searcher, xq[:lat_q])


def peer_search(index, q: np.ndarray, k_factor: int, rescore: bool = True) -> list:
    """sentence-transformers' ``semantic_search_faiss`` over its ubinary index: hits per query."""
    from sentence_transformers.util.quantization import semantic_search_faiss

    return semantic_search_faiss(q, corpus_index=index, corpus_precision="ubinary", top_k=10, rescore=rescore,
                                 rescore_multiplier=k_factor)[0]


def peer_latency(index, xq: np.ndarray, k_factor: int, rescore: bool = True) -> tuple[float, float]:
    """p50 and p99 (ms) of one-query ``semantic_search_faiss`` calls."""
    times = []
    for i in range(len(xq)):
        t = time.perf_counter()
        peer_search(index, xq[i: i + 1], k_factor, rescore)
        times.append((time.perf_counter() - t) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def peer_run(index, xq: np.ndarray, k_factor: int, lat_q: int, rescore: bool = True
             ) -> tuple[np.ndarray, float, float]:
    """Top-10 rows of every query and one-query latency, for the peer."""
    rows = np.array([[h["corpus_id"] for h in hits] for hits in peer_search(index, xq, k_factor, rescore)])
    return rows, *peer_latency(index, xq[:lat_q], k_factor, rescore)


def run(quick: bool, k_factor: int, sweep: list[int], lat_q: int, threads: int, rounds: int) -> str:
    import faiss
    import ray
    from sentence_transformers import quantize_embeddings

    from fastemb.eval.retrieval import metrics_of_hits
    from fastemb.index.evaluate import latency_ms, recall_at_k
    from fastemb.ray_env import init_ray

    t_start = time.time()
    data, xb, xq = _eval_embeddings("all-MiniLM-L6-v2", threads, ROOT / "bench" / "out")
    if quick:
        xq, data = xq[:200], dataclasses.replace(data, queries=data.queries[:200], relevant=data.relevant[:200])
    n, d = xb.shape
    faiss.omp_set_num_threads(1)
    init_ray(num_cpus=threads)
    try:
        built = build_fastemb(write_shard(xb, data.corpus_ids, data.corpus, OUT / "shards"), k_factor)
    finally:
        ray.shutdown()
    rows: list[dict] = []
    truth = None

    def record(system: str, name: str, kf: int | None, found: np.ndarray, p50: float, p99: float, mem: float,
               disk: float, file_b: float | None = None) -> None:
        nonlocal truth
        truth = truth if truth is not None else found
        rows.append({"system": system, "name": name, "k_factor": kf, "p50": p50, "p99": p99, "mem": mem,
                     "disk": disk, "file": file_b, "ndcg": metrics_of_hits(found, data)["ndcg@10"],
                     "recall": recall_at_k([list(r) for r in found], [list(r) for r in truth])})

    for name, b in built.items():
        info, rescored = b["info"], name.endswith("disk")
        for kf in (sorted({*sweep, k_factor}) if rescored else [None]):
            found, p50, p99 = fastemb_run(b["searcher"], xq, kf or 1, lat_q)
            record("fastemb", name, kf, found, p50, p99, info["code_bytes_per_vector"],
                   info["refine"].get("bytes_per_vector_on_disk", 0), info["file_bytes_per_vector"])
    peer = faiss.IndexBinaryFlat(d)
    peer.add(quantize_embeddings(xb, precision="ubinary"))
    found, p50, p99 = peer_run(peer, xq, 1, lat_q, rescore=False)
    record("sentence-transformers", "ubinary, no rescore", None, found, p50, p99, peer.code_size, 0)
    for kf in sorted({*sweep, k_factor}):
        found, p50, p99 = peer_run(peer, xq, kf, lat_q)
        record("sentence-transformers", "ubinary + rescore (binary corpus)", kf, found, p50, p99, peer.code_size, 0)
    int8 = built["binary + int8 disk"]["searcher"]
    int8.k_factor = k_factor
    ratios = []  # p50 peer / fastemb int8 at k_factor, alternating rounds (above 1: fastemb faster)
    for _ in range(rounds):
        ours = latency_ms(int8, xq[:lat_q])[0]
        ratios.append(peer_latency(peer, xq[:lat_q], k_factor)[0] / ours)
    body = report(rows, n, d, len(xq), k_factor, lat_q, threads, quick, ratios)
    return body + f"\nWhole script {time.time() - t_start:.0f}s (embedding cache reused when present).\n"


def report(rows: list[dict], n: int, d: int, nq: int, k_factor: int, lat_q: int, threads: int, quick: bool,
           ratios: list[float]) -> str:
    """The RESULTS.md section body."""
    full = 4 * d
    exact = rows[0]

    def line(r: dict) -> str:
        kf = r["k_factor"] if r["k_factor"] is not None else "–"
        return (f"| {r['system']} | {r['name']} | {kf} | {r['recall']:.4f} | {r['ndcg']:.4f} "
                f"({100 * r['ndcg'] / exact['ndcg']:.1f} %) | {r['mem']:.0f} ({full / r['mem']:.0f}×) | "
                f"{r['disk'] or '–'} | {r['p50']:.3f} | {r['p99']:.3f} |")

    head = ["| system | configuration | k_factor | recall@10 vs exact | nDCG@10 (kept) | B/vector in memory "
            "(compression) | B/vector on disk for re-scoring | p50 ms | p99 ms |",
            "|---|---|---|---|---|---|---|---|---|"]
    main = [r for r in rows if r["k_factor"] in (None, k_factor)]
    sweep = [r for r in rows if r["k_factor"] is not None]
    by = {(r["system"], r["name"], r["k_factor"]): r for r in rows}
    f16, i8 = by[("fastemb", "binary + fp16 disk", k_factor)], by[("fastemb", "binary + int8 disk", k_factor)]
    st = by[("sentence-transformers", "ubinary + rescore (binary corpus)", k_factor)]
    plain = by[("fastemb", "binary", None)]
    met = lambda ok: "**met**" if ok else "**missed**"  # noqa: E731
    sweep_lines = []
    for kf in sorted({r["k_factor"] for r in sweep}):
        cells = [by.get((s, nm, kf)) for s, nm in (("fastemb", "binary + fp16 disk"), ("fastemb", "binary + int8 disk"),
                                                    ("sentence-transformers", "ubinary + rescore (binary corpus)"))]
        sweep_lines.append(f"| {kf} | {kf * 10} | " + " | ".join(f"{c['recall']:.4f} / {c['p50']:.3f}" for c in cells)
                           + " |")
    reach = [kf for kf in sorted({r["k_factor"] for r in sweep})
             if min(by[("fastemb", "binary + fp16 disk", kf)]["recall"],
                    by[("fastemb", "binary + int8 disk", kf)]["recall"]) >= 0.95]
    exact_file = exact["file"]
    scope = " (--quick: first 200 queries)" if quick else ""
    return f"""WordNet test protocol{scope}: {nq:,} queries × {n:,} definitions, all-MiniLM-L6-v2
({d}-d unit vectors, float32 = {full} B). fastemb builds each configuration with its own index stage
(`fastemb.index.stages.index_shards`: Ray train/add/merge tasks on a local Ray of {threads} CPUs, the refine store
written by the add tasks) and searches it with its `Searcher`; the peer is sentence-transformers'
`quantize_embeddings(precision="ubinary")` + faiss `IndexBinaryFlat` searched by `semantic_search_faiss(...,
corpus_precision="ubinary", rescore=True, rescore_multiplier=k_factor)`, which re-scores the candidates with the
float query against their **binary** vectors (it keeps no other copy). Both fetch 10 × k_factor Hamming candidates.
Recall@10 vs exact = overlap of the top 10 with fastemb's exact float32 search; nDCG@10 on the labels (share kept of
exact's). Latency: one query at a time, {lat_q} queries, one faiss thread, query encoding excluded; fastemb's figure
includes mapping rows to document ids, the peer's its result dicts. Bytes in memory: the codes; on disk: the vector
file read for re-scoring (the int8 store also keeps {d} float32 scales per index, {4 * d} B in all). fastemb's
index.faiss file: {exact_file} B/vector exact, {plain['file']} B/vector binary.

At k_factor {k_factor} (the default of `index.type: binary` with `index.refine: disk`):

{chr(10).join(head + [line(r) for r in main])}

k_factor sweep (recall@10 vs exact / p50 ms):

| k_factor | candidates | fastemb fp16 disk | fastemb int8 disk | sentence-transformers binary rescore |
|---|---|---|---|---|
{chr(10).join(sweep_lines)}

**Target (binary + re-scoring at ≥ 32× compression in memory, recall@10 vs exact ≥ 0.95):** at k_factor {k_factor},
{f16['mem']:.0f} B in memory ({full / f16['mem']:.0f}×): fp16 re-scoring {f16['recall']:.4f}
{met(f16['recall'] >= 0.95)}, int8 re-scoring {i8['recall']:.4f} {met(i8['recall'] >= 0.95)} (binary alone:
{plain['recall']:.4f}). Smallest swept k_factor where both reach 0.95: {reach[0] if reach else 'none'}.

Ratios at k_factor {k_factor}: recall@10 fastemb int8 / sentence-transformers {i8['recall'] / st['recall']:.3f}
({i8['recall']:.4f} vs {st['recall']:.4f}); p50 latency fastemb int8 / sentence-transformers
{i8['p50'] / st['p50']:.2f}×, fastemb fp16 / sentence-transformers {f16['p50'] / st['p50']:.2f}×; p50 latency of
re-scoring vs binary alone (fastemb): int8 {i8['p50'] / plain['p50']:.2f}×, fp16 {f16['p50'] / plain['p50']:.2f}×;
bytes on disk int8 / fp16 {i8['disk'] / f16['disk']:.2f}. p50 latency, sentence-transformers / fastemb int8, over
{len(ratios)} alternating rounds of {lat_q} queries: {spread(ratios, 2, 'rounds')}: {ratio_verdict(ratios, 'fastemb',
'sentence-transformers')}.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200 queries, 50 timed; printed only")
    ap.add_argument("--k-factor", type=int, default=20, help="the k_factor of the main table")
    ap.add_argument("--sweep", default="5,10,20,30,40", help="k_factors of the sweep (comma-separated)")
    ap.add_argument("--latency-queries", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2, help="embedding threads and local Ray CPUs")
    ap.add_argument("--rounds", type=int, default=3, help="alternating latency rounds, fastemb int8 vs the peer")
    a = ap.parse_args()
    configure_logging()
    lat_q = 50 if a.quick else a.latency_queries
    body = run(a.quick, a.k_factor, [int(k) for k in a.sweep.split(",")], lat_q, a.threads, a.rounds)
    print(body)
    if not a.quick or os.environ.get("FASTEMB_BENCH_RESULTS"):
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
