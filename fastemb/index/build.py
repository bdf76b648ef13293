"""Sharded faiss build on Ray: train on a sample → add to copies of the trained index in parallel → merge.

The driver only passes file names, row ranges and the trained (empty) index; vectors are read by the tasks
from the embedding shards. Shard indexes are written next to the output and merged by one task with
``merge_from`` in shard order, so faiss ids are the row numbers of ``ids.parquet``. HNSW, whose graph cannot
be merged, is built by one task streaming the shards. With ``refine_store`` the add tasks also write the vectors
they add (after the compressor) at their row offsets into ``refine_vectors.f16`` (or, int8 with per-dimension scales
calibrated on the training sample, ``refine_vectors.i8``), so its row r is faiss id r (``index.refine: disk``). A
binary index refuses a training sample that is not unit-norm (fastemb/index/binary.py). With ``on_this_node``
(shards and output in the driver's local staging folder) every task runs on the driver's node.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import faiss
import numpy as np
import ray

from fastemb.index.embed import this_node
from fastemb.index.shard_rows import peak_rss_mb
from fastemb.index.binary import NotUnitNormError, check_unit_norm, is_binary
from fastemb.index.factory import code_bytes, is_mergeable, make_index
from fastemb.index.refine import SCALES_FILE, STORE_FILES, int8_scales, open_store, to_store
from fastemb.index.shards import read_kept, sample_vectors, vectors_of

logger = logging.getLogger(__name__)


def _transformer(compressor_dir: str | None):
    if not compressor_dir:
        return lambda x: x
    from fastemb.compress import load_compressor

    return load_compressor(compressor_dir).transform


def split_ranges(files: list[str], counts: list[int], parts: int) -> list[list[tuple[str, int, int]]]:
    """Cut the kept rows (shards in order) into ``parts`` contiguous pieces of (file, start, stop)."""
    total = sum(counts)
    bounds = np.linspace(0, total, max(1, min(parts, total)) + 1).astype(int)
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        piece, offset = [], 0
        for f, c in zip(files, counts):
            s, e = max(lo, offset), min(hi, offset + c)
            if s < e:
                piece.append((f, s - offset, e - offset))
            offset += c
        out.append(piece)
    return out


@ray.remote
def train_task(files, counts, drop, factory: str, train_size: int, compress: dict | None,
               compressor_dir: str | None, seed: int = 0, threads: int = 1, int8: bool = False):
    """Sample, fit the compressor (saved to ``compressor_dir``), train the index; return it serialized (and with
    ``int8``, the int8 store's per-dimension scales of the sample, in ``info["scales"]``).

    Nothing else runs during training, so the task asks for ``threads`` CPUs and uses them all; given a GPU (and the
    faiss-gpu build) the IVF k-means runs on it (fastemb/index/faiss_gpu.py)."""
    from fastemb.index.faiss_gpu import gpu_clustering

    faiss.omp_set_num_threads(threads)
    t0 = time.time()
    x = sample_vectors(files, counts, drop, train_size, seed)
    if compress:
        from fastemb.compress import make_compressor

        comp = make_compressor(compress["method"], x.shape[1], compress.get("dim"), compress.get("renormalize", True),
                               **compress.get("params", {}))
        comp.fit(x).save(compressor_dir)
        x = comp.transform(x)
    index = make_index(x.shape[1], factory)
    if is_binary(index):
        check_unit_norm(x)
    with gpu_clustering(index) as on_gpu:
        if ray.get_runtime_context().get_accelerator_ids().get("GPU") and not on_gpu:
            logger.warning("index.train_on_gpu: this node's faiss has no GPU support (faiss-cpu) or the index is not "
                           "IVF; training on CPU")
        index.train(np.ascontiguousarray(x))
    info = {"train_vectors": len(x), "train_s": round(time.time() - t0, 2), "peak_rss_mb": peak_rss_mb(),
            "dim": int(x.shape[1]), "code_bytes": code_bytes(index),  # a property of the structure: known now
            "trained_on": "gpu" if on_gpu else "cpu", "scales": int8_scales(x) if int8 else None}
    return faiss.serialize_index(index), info


@ray.remote(num_cpus=1)
def add_task(trained: np.ndarray, piece, drop, compressor_dir: str | None, out_path: str, batch: int = 65536,
             store: str | None = None, first_row: int = 0, scales: np.ndarray | None = None):
    """Add one piece of kept rows to a copy of the trained index and write it to ``out_path``; with ``store``,
    also write the added vectors (fp16, or int8 codes with ``scales``) into that existing file from row ``first_row``
    on."""
    faiss.omp_set_num_threads(1)
    index = faiss.deserialize_index(trained)
    transform = _transformer(compressor_dir)
    out = open_store(store, index.d, mode="r+") if store else None
    row = first_row
    for f, start, stop in piece:
        table = read_kept(f, drop.get(f), ["vector"]).slice(start, stop - start)
        for s in range(0, table.num_rows, batch):
            x = np.ascontiguousarray(transform(vectors_of(table.slice(s, batch))))
            index.add(x)
            if out is not None:
                out[row: row + len(x)] = to_store(x, scales)
                row += len(x)
    if out is not None:
        out.flush()
        del out
    tmp = out_path + ".tmp"
    faiss.write_index(index, tmp)
    os.replace(tmp, out_path)
    return {"added": int(index.ntotal), "peak_rss_mb": peak_rss_mb()}


def _merge_into(a, b) -> None:
    """Append index ``b`` to ``a`` (same trained quantizer); refine indexes merge both their parts."""
    da, db = faiss.downcast_index(a), faiss.downcast_index(b)
    if isinstance(da, (faiss.IndexRefine, faiss.IndexRefineFlat)):
        _merge_into(da.base_index, db.base_index)
        _merge_into(da.refine_index, db.refine_index)
        da.ntotal = da.base_index.ntotal
        return
    ivf = faiss.try_extract_index_ivf(da)
    da.merge_from(db, int(da.ntotal) if ivf is not None else 0)


@ray.remote(num_cpus=1)
def merge_task(paths: list[str], out_path: str):
    """Merge shard indexes in order into ``out_path`` (written atomically); each shard is freed once merged.

    The parts are left in place (the driver deletes them), so a retried merge finds them all again."""
    t0 = time.time()
    index = faiss.read_index(paths[0])
    for p in paths[1:]:
        _merge_into(index, faiss.read_index(p))
    tmp = out_path + ".tmp"
    faiss.write_index(index, tmp)
    os.replace(tmp, out_path)
    return {"ntotal": int(index.ntotal), "merge_s": round(time.time() - t0, 2), "peak_rss_mb": peak_rss_mb()}


def largest_node_cpus(only_this_node: bool = False, with_gpu: bool = False) -> int:
    """CPUs of the biggest live node (of those with a GPU), or of the driver's (a task asking for more than one node
    has would never be scheduled)."""
    here = ray.get_runtime_context().get_node_id() if only_this_node else None
    return max([1] + [int(n["Resources"].get("CPU", 0)) for n in ray.nodes()
                      if n.get("Alive") and here in (None, n["NodeID"])
                      and (not with_gpu or n["Resources"].get("GPU", 0) >= 1)])


def build_index(files: list[str], counts: list[int], drop: dict, out_dir: str | Path, kind: str, factory: str, *,
                train_size: int = 100_000, compress: dict | None = None, add_tasks: int | None = None,
                seed: int = 0, on_this_node: bool = False, refine_store: bool = False, store_dtype: str = "float16",
                log_level: int = logging.INFO, train_on_gpu: bool = False) -> dict:
    """Train, add in parallel and merge; writes ``out_dir/index.faiss`` (+ ``compressor/``, + with ``refine_store``
    the ``store_dtype`` vector file: ``refine_vectors.f16``, or ``refine_vectors.i8`` and ``refine_scales.npy``).
    Returns timings; logs the train and add times at ``log_level``.
    ``train_on_gpu``: the training task asks for a GPU (IVF k-means there with faiss-gpu); add and merge tasks always
    run on CPUs."""
    out_dir = Path(out_dir)
    (out_dir / "parts").mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out_dir / "compressor", ignore_errors=True)  # a rebuild never keeps a stale compressor
    for stale in (*STORE_FILES.values(), SCALES_FILE):  # nor a stale refine store
        (out_dir / stale).unlink(missing_ok=True)
    int8 = refine_store and store_dtype == "int8"
    compressor_dir = str(out_dir / "compressor") if compress else None
    t0 = time.time()
    place = this_node() if on_this_node else {}
    # quantizer training is one multi-threaded task: it fits on one node (a GPU node with train_on_gpu)
    threads = largest_node_cpus(on_this_node, train_on_gpu)
    gpu = {"num_gpus": 1} if train_on_gpu else {}
    trained_ref, info_ref = train_task.options(num_returns=2, num_cpus=threads, **gpu, **place).remote(
        files, counts, drop, factory, train_size, compress, compressor_dir, seed, threads, int8)
    try:
        info = ray.get(info_ref)
    except NotUnitNormError as err:  # the training task's check: its own message, without Ray's task traceback
        raise getattr(err, "cause", err) from None
    scales = info.pop("scales")
    if int8:
        np.save(out_dir / SCALES_FILE, scales)
    t_train = time.time() - t0
    parts = add_tasks or max(1, int(ray.cluster_resources().get("CPU", 1)))
    if not is_mergeable(kind):
        parts = 1
    pieces = split_ranges(files, counts, parts)
    paths = [str(out_dir / "parts" / f"part-{i:05d}.faiss") for i in range(len(pieces))]
    final = str(out_dir / "index.faiss")
    if len(pieces) == 1:
        paths = [final]
    store_file = STORE_FILES[store_dtype]
    store = str(out_dir / "parts" / store_file) if refine_store else None
    if store:  # a sparse file of the final size: each add task fills its rows
        open_store(store, info["dim"], sum(counts), mode="w+").flush()
    first_rows = np.cumsum([0] + [sum(e - s for _, s, e in p) for p in pieces])
    adds = ray.get([add_task.options(**place).remote(trained_ref, p, drop, compressor_dir, path, store=store,
                                                     first_row=int(r), scales=scales)
                    for p, path, r in zip(pieces, paths, first_rows)])
    t_add = time.time() - t0 - t_train
    logger.log(log_level, f"trained in {t_train:.1f}s, added {sum(a['added'] for a in adds)} vectors in "
                          f"{len(pieces)} task(s) in {t_add:.1f}s")
    merged = ray.get(merge_task.options(**place).remote(paths, final)) if len(paths) > 1 else {
        "ntotal": adds[0]["added"], "merge_s": 0.0, "peak_rss_mb": adds[0]["peak_rss_mb"]}
    if store:
        os.replace(store, out_dir / store_file)
    shutil.rmtree(out_dir / "parts")
    return {"factory": factory, "dim": info["dim"], "train_vectors": info["train_vectors"],
            "train_s": round(t_train, 2), "add_s": round(t_add, 2), "merge_s": merged["merge_s"],
            "build_s": round(time.time() - t0, 2), "add_tasks": len(pieces), "ntotal": merged["ntotal"],
            "code_bytes_per_vector": info["code_bytes"], "trained_on": info["trained_on"],
            "worker_peak_rss_mb": max([info["peak_rss_mb"], merged["peak_rss_mb"], *[a["peak_rss_mb"] for a in adds]]),
            "compressor": compressor_dir}
