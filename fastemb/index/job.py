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
import logging
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from fastemb.index.corpus import SKIP_DUPLICATE, SKIP_UNREADABLE, scan_corpus
from fastemb.index.embed import shard_files
from fastemb.index.shard_rows import peak_rss_mb
from fastemb.index.refine import SCALES_FILE, STORE_FILES
from fastemb.index.stages import EMBEDDINGS, embed_stage, embeddings_dir, index_shards, staged
from fastemb.model.card import CardUpdate, has_fastemb_card, table, write_card
from fastemb.record import files_fingerprint, keep_spec, reproducible_record
from fastemb.spec import SPEC_FILE, IndexJob
from fastemb.storage import is_uri, pull, pull_folders, push, push_folder, run_uri
from fastemb.tracking.run import Tracker, track_job

# not fetched from the store: every run writes them anew
REBUILT = ("index.faiss", "ids.parquet", *STORE_FILES.values(), SCALES_FILE)
# the columns of the compression table logged to MLflow per evaluated configuration
COMPRESSION_METRICS = ("recall@10", "ndcg@10", "ndcg_kept", "code_bytes", "compression_x", "p50_ms", "p99_ms",
                       "build_s")

logger = logging.getLogger(__name__)


def run_index(spec: IndexJob) -> dict:
    """The whole job; writes ``<run_dir>/manifest.json`` and returns it. With ``tracking.mlflow`` the job is an MLflow
    run (the counts, build figures and the compression table as metrics); with an evaluation, the indexed model's
    card (a local folder with a card fastemb wrote) gets the compression table."""
    from fastemb.ray_env import init_ray

    t0 = time.time()
    init_ray(spec.ray.address, spec.ray.num_cpus, spec.embed.threads_per_actor)
    run_dir = spec.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    keep_spec(spec)
    tracker = track_job(spec)
    with tracker.running():
        manifest = _build(spec, t0, tracker)
        _publish(spec, manifest, tracker)
    if staged(spec):
        push(run_dir, spec.storage_path, spec.name, exclude=(EMBEDDINGS,), last="manifest.json")
    logger.info(f"{manifest['counts']['index_entries']} entries in {spec.output_location} ({manifest['build_s']:.1f}s)")
    return manifest


def _build(spec: IndexJob, t0: float, tracker: Tracker) -> dict:
    """Embed, build, (evaluate); the manifest."""
    run_dir = spec.run_dir
    emb_dir = embeddings_dir(spec)
    on_unit = _stage_in(spec, emb_dir) if staged(spec) else None
    c = spec.corpus
    scan = scan_corpus(c.path, c.id_column, c.content_column, c.on_bad_file)
    logger.info(f"corpus: {len(scan.files)} file(s), {scan.total_rows} rows, {len(scan.unreadable)} unreadable, "
                f"{len(scan.duplicate_ids)} duplicated id(s)")
    local = all(Path(f).is_file() for f in scan.files)
    record = reproducible_record(spec, files_fingerprint(scan.files) if local and scan.files else None)
    tracker.log_record(record)
    emb = embed_stage(spec, scan, emb_dir, on_unit)
    info = index_shards(emb["shard_dirs"], scan.duplicate_ids, run_dir, spec.index, spec.compress, staged(spec))
    skipped = Counter(info.pop("skipped"))
    if info["duplicate_docs"]:
        skipped[SKIP_DUPLICATE] += info["duplicate_docs"]
    if scan.unreadable:
        skipped[SKIP_UNREADABLE] += len(scan.unreadable)  # whole files: their row count is unknown
    manifest = {
        "job": "index", "config": spec.model_dump(mode="json"), "dims": {"model": None, "index": info["dim"]},
        "modality": "image" if c.images else "text",
        "location": run_uri(spec.storage_path, spec.name) if staged(spec) else str(run_dir),  # search/serve read it
        "counts": {"files": len(scan.files) + len(scan.unreadable), "rows_read": scan.total_rows,
                   "documents_indexed": info["documents"], "index_entries": info["entries"],
                   "skipped": dict(skipped), "unreadable_files": scan.unreadable},
        "embedding": {k: v for k, v in emb.items() if k != "units"} | {"units": len(emb["units"])},
        "build": {k: v for k, v in info.items() if k not in ("entries", "documents")},
        "compression": spec.compress.model_dump(mode="json"),
        "memory": {"driver_peak_rss_mb": round(peak_rss_mb(), 1),
                   "worker_peak_rss_mb": round(max(emb["worker_peak_rss_mb"], info["worker_peak_rss_mb"]), 1)},
        "record": record,
    }
    first = pq.read_schema(next(iter(shard_files(emb["shard_dirs"])))).field("vector")
    manifest["dims"]["model"] = first.type.list_size
    manifest["build_s"] = round(time.time() - t0, 2)
    _write_manifest(run_dir, manifest)
    if spec.evaluate.enabled:
        from fastemb.index.evaluate import evaluate_job

        manifest["evaluation"] = evaluate_job(spec)
        manifest["card"] = _extend_model_card(spec, manifest)
        _write_manifest(run_dir, manifest)
    manifest["mlflow"] = tracker.info()
    return manifest


def _extend_model_card(spec: IndexJob, manifest: dict) -> str | None:
    """Add the compression table to the indexed model's card, when the model is a local folder whose card fastemb
    wrote (never an alias's or a third-party folder's); returns the card's path."""
    model = spec.model.base
    if is_uri(model) or not has_fastemb_card(model):
        return None
    rows = [[r["name"], r["code_bytes"], f"{r['compression_x']:.0f}×", r["recall@10"], r["ndcg@10"],
             f"{r['ndcg_kept']:.1%}" if r.get("ndcg_kept") else None, f"{r['p50_ms']:.2f}"]
            for r in manifest["evaluation"]["results"]]
    ev = manifest["evaluation"]
    section = (f"## Compression\n\nThe `fastemb index` job `{spec.name}` ({manifest['location']}) indexed "
               f"{manifest['counts']['documents_indexed']} documents with this model; on {spec.evaluate.eval} "
               f"{ev['split']} ({ev['queries']} queries, {ev['corpus']} documents):\n\n"
               + table(["index", "bytes/vector", "compression", "recall@10 vs exact", "nDCG@10", "nDCG kept",
                        "p50 ms"], rows))
    return str(write_card(model, CardUpdate(sections={"compression": section})))


def _publish(spec: IndexJob, manifest: dict, tracker: Tracker) -> None:
    """The index in MLflow: counts, build figures, and each evaluated configuration's row of the compression table
    (``<configuration>/recall_at_10``, ...); the manifest, plot and spec files."""
    counts = manifest["counts"]
    tracker.log_metrics({"documents_indexed": counts["documents_indexed"], "index_entries": counts["index_entries"],
                         "rows_read": counts["rows_read"], "rows_skipped": sum(counts["skipped"].values()),
                         "build_s": manifest["build_s"], **manifest["memory"]})
    for row in (manifest.get("evaluation") or {}).get("results", []):
        tracker.log_metrics({f"{row['name']}/{k}": row[k] for k in COMPRESSION_METRICS if k in row})
    tracker.log_artifacts([spec.run_dir / name for name in ("manifest.json", "compression.png", SPEC_FILE)])


def _stage_in(spec: IndexJob, emb_dir: Path):
    """Fetch the run's earlier files from the store; returns the callback that uploads each finished embedding unit
    (None when the shards go to an explicit ``embed.output``)."""
    path, name = spec.storage_path, spec.name
    fetched = pull(path, name, spec.run_dir, exclude=(EMBEDDINGS, *REBUILT))
    units = pull_folders(path, name, EMBEDDINGS, emb_dir) if not spec.embed.output else 0
    logger.info(f"outputs go to {spec.output_location} (staged in {spec.run_dir}; fetched {fetched} earlier "
                f"entries and {units} finished embedding units)")
    if spec.embed.output:
        return None
    return lambda unit: push_folder(unit, path, name, f"{EMBEDDINGS}/{unit.name}")


def _write_manifest(run_dir: Path, manifest: dict) -> None:
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))


def cli_summary(manifest: dict) -> dict:
    """What ``fastemb index`` prints: where the index is, its counts, build time and memory."""
    return {"index_dir": manifest["location"], "counts": manifest["counts"], "build_s": manifest["build_s"],
            "memory": manifest["memory"]}
