"""``fastemb index``: corpus → embedding shards (Ray Data) → compressed faiss index + id map + manifest.

With an object-store ``storage_path`` the job works in a local staging folder (fastemb/storage.py): it first
fetches the run's earlier files, finished embedding units included (so they are reused, on any node), uploads
each embedding unit as soon as it is finished (a crash loses at most the units in progress), and uploads the
index, id map, plots and manifest (last) when done. Ray tasks that read or write the staging folder (shard
writes, the faiss build) then run on the driver's node; the encoder actors run anywhere. Shards written to an
explicit ``embed.output`` stay there (a local or shared path).
"""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from fastemb.index.build import build_index
from fastemb.index.corpus import SKIP_DUPLICATE, SKIP_UNREADABLE, CorpusScan, scan_corpus
from fastemb.index.embed import embed_corpus, peak_rss_mb, shard_files
from fastemb.index.factory import factory_string
from fastemb.index.refine import STORE_DTYPE, STORE_FILE, refine_k_factor
from fastemb.index.shards import kept_counts, plan_duplicates, write_id_map
from fastemb.storage import is_uri, pull, pull_folders, push, push_folder, run_uri

EMBEDDINGS = "embeddings"  # the run folder's embedding units (default embed.output)
REBUILT = ("index.faiss", "ids.parquet", STORE_FILE)  # not fetched from the store: every run writes them anew


def model_dict(spec) -> dict:
    m = spec.model
    out = {"base": m.base, "pooling": m.pooling, "normalize": m.normalize, "max_length": m.max_length}
    if m.synonyms:  # only when set: the dict salts the reusable embedding units
        out["synonyms"] = m.synonyms
    return out


def staged(spec) -> bool:
    """The run folder is the driver's local staging folder of an object-store ``storage_path``."""
    return is_uri(spec.storage_path)


def embed_stage(spec, scan: CorpusScan, emb_dir: Path, log=print, on_unit=None) -> dict:
    """Run (or reuse) the Ray Data embedding of a scanned corpus."""
    e, c = spec.embed, spec.chunking
    chunking = {"overlap": c.overlap, "max_chunks": c.max_chunks} if c.enabled else None
    return embed_corpus(scan, emb_dir, model_dict(spec), id_column=spec.corpus.id_column,
                        text_column=spec.corpus.text_column, num_actors=e.num_actors,
                        threads_per_actor=e.threads_per_actor, batch_rows=e.batch_rows,
                        max_batch_tokens=e.max_batch_tokens, rows_per_unit=e.rows_per_unit,
                        chunking=chunking, on_this_node=staged(spec), on_unit=on_unit, backend=e.backend, log=log)


def index_shards(shard_dirs: list[str], duplicate_ids: set[str], out_dir: Path, index_cfg: dict,
                 compress_cfg: dict, on_this_node: bool = False, log=print) -> dict:
    """Build ``out_dir/{index.faiss, ids.parquet, compressor/}`` (+ ``refine_vectors.f16`` with refine disk) from
    embedding shards; returns build info."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = shard_files(shard_dirs)
    drop, dup_docs = plan_duplicates(files, duplicate_ids)
    counts = kept_counts(files, drop)
    n = sum(counts)
    if n == 0:
        raise ValueError("no embedded rows to index (every row was skipped)")
    dim = pq.read_schema(files[0]).field("vector").type.list_size
    compress = None
    if compress_cfg["method"] != "none":
        compress = {"method": compress_cfg["method"], "dim": compress_cfg["dim"], "params": compress_cfg["params"]}
        dim = compress_cfg["dim"]
    ic = index_cfg
    factory = factory_string(ic["type"], dim, n, nlist=ic["nlist"], bytes_per_vector=ic["bytes_per_vector"],
                             pq_m=ic["pq_m"], pq_nbits=ic["pq_nbits"], hnsw_m=ic["hnsw_m"], refine=ic["refine"])
    info = build_index(files, counts, drop, out_dir, ic["type"], factory, train_size=ic["train_size"],
                       compress=compress, add_tasks=ic["add_tasks"], seed=ic["seed"], on_this_node=on_this_node,
                       refine_store=ic["refine"] == "disk", log=log)
    rows, skipped = write_id_map(files, drop, str(out_dir / "ids.parquet"))
    if rows != info["ntotal"]:
        raise RuntimeError(f"index holds {info['ntotal']} vectors but the id map {rows}: build is inconsistent")
    ids = pq.read_table(out_dir / "ids.parquet", columns=["chunk"])
    index_file = out_dir / "index.faiss"
    info.update(entries=rows, documents=int(pc.sum(pc.equal(ids["chunk"], 0)).as_py() or 0),
                skipped=dict(skipped), duplicate_docs=dup_docs,
                file_bytes_per_vector=round(index_file.stat().st_size / rows, 2),
                refine=_refine_info(out_dir, ic, rows, info["dim"]))
    return info


def _refine_info(out_dir: Path, index_cfg: dict, rows: int, dim: int) -> dict:
    """How the index re-ranks; for ``disk``, the vector file kept beside it (not counted in memory bytes)."""
    mode = index_cfg["refine"]
    if mode == "none":
        return {"mode": mode}
    out = {"mode": mode, "k_factor": refine_k_factor(mode, index_cfg["k_factor"]), "in_memory": mode != "disk"}
    if mode == "disk":
        size = (out_dir / STORE_FILE).stat().st_size
        if size != rows * dim * STORE_DTYPE.itemsize:
            raise RuntimeError(f"{STORE_FILE} holds {size} bytes, not {rows} × {dim} {STORE_DTYPE}: build is "
                               "inconsistent")
        out |= {"file": STORE_FILE, "dtype": STORE_DTYPE.name, "bytes": size, "bytes_per_vector_on_disk": size // rows}
    return out


def run_index(spec, log=print) -> dict:
    """The whole job; writes ``<run_dir>/manifest.json`` and returns it."""
    from fastemb.ray_env import init_ray

    t0 = time.time()
    init_ray(spec.ray.address, spec.ray.num_cpus, spec.embed.threads_per_actor)
    run_dir = spec.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    emb_dir = Path(spec.embed.output).expanduser() if spec.embed.output else run_dir / EMBEDDINGS
    on_unit = _stage_in(spec, emb_dir, log) if staged(spec) else None
    c = spec.corpus
    scan = scan_corpus(c.path, c.id_column, c.text_column, c.on_bad_file)
    log(f"[index] corpus: {len(scan.files)} file(s), {scan.total_rows} rows, {len(scan.unreadable)} unreadable, "
        f"{len(scan.duplicate_ids)} duplicated id(s)")
    emb = embed_stage(spec, scan, emb_dir, log, on_unit)
    info = index_shards(emb["shard_dirs"], scan.duplicate_ids, run_dir, spec.index.model_dump(),
                        spec.compress.model_dump(), staged(spec), log)
    skipped = Counter(info.pop("skipped"))
    if info["duplicate_docs"]:
        skipped[SKIP_DUPLICATE] += info["duplicate_docs"]
    if scan.unreadable:
        skipped[SKIP_UNREADABLE] += len(scan.unreadable)  # whole files: their row count is unknown
    manifest = {
        "job": "index", "config": spec.model_dump(mode="json"), "dims": {"model": None, "index": info["dim"]},
        "location": run_uri(spec.storage_path, spec.name) if staged(spec) else str(run_dir),  # search/serve read it
        "counts": {"files": len(scan.files) + len(scan.unreadable), "rows_read": scan.total_rows,
                   "documents_indexed": info["documents"], "index_entries": info["entries"],
                   "skipped": dict(skipped), "unreadable_files": scan.unreadable},
        "embedding": {k: v for k, v in emb.items() if k != "units"} | {"units": len(emb["units"])},
        "build": {k: v for k, v in info.items() if k not in ("entries", "documents")},
        "compression": spec.compress.model_dump(mode="json"),
        "memory": {"driver_peak_rss_mb": round(peak_rss_mb(), 1),
                   "worker_peak_rss_mb": round(max(emb["worker_peak_rss_mb"], info["worker_peak_rss_mb"]), 1)},
    }
    first = pq.read_schema(next(iter(shard_files(emb["shard_dirs"])))).field("vector")
    manifest["dims"]["model"] = first.type.list_size
    manifest["build_s"] = round(time.time() - t0, 2)
    _write_manifest(run_dir, manifest)
    if spec.evaluate.enabled:
        from fastemb.index.evaluate import evaluate_job

        manifest["evaluation"] = evaluate_job(spec, log)
        _write_manifest(run_dir, manifest)
    if staged(spec):
        push(run_dir, spec.storage_path, spec.name, exclude=(EMBEDDINGS,), last="manifest.json")
    log(f"[index] {info['entries']} entries in {spec.output_location} ({manifest['build_s']:.1f}s)")
    return manifest


def _stage_in(spec, emb_dir: Path, log=print):
    """Fetch the run's earlier files from the store; returns the callback that uploads each finished embedding unit
    (None when the shards go to an explicit ``embed.output``)."""
    path, name = spec.storage_path, spec.name
    fetched = pull(path, name, spec.run_dir, exclude=(EMBEDDINGS, *REBUILT))
    units = pull_folders(path, name, EMBEDDINGS, emb_dir) if not spec.embed.output else 0
    log(f"[index] outputs go to {spec.output_location} (staged in {spec.run_dir}; fetched {fetched} earlier "
        f"entries and {units} finished embedding units)")
    if spec.embed.output:
        return None
    return lambda unit: push_folder(unit, path, name, f"{EMBEDDINGS}/{unit.name}")


def _write_manifest(run_dir: Path, manifest: dict) -> None:
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
