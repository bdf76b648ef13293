"""Corpus → embedding shards with Ray Data.

``read_parquet`` → ``map_batches(EmbedActor, compute=ActorPoolStrategy)`` → ``write_parquet``. Each actor loads the
encoder once, validates texts, tokenises without padding, sorts the batch by token length and cuts it into
micro-batches under a padded-token budget (length bucketing: little padding, big batches of short texts), then
restores the row order. Long documents can be split into overlapping token windows (one row per chunk). The forward
pass runs on ``backend`` (fastemb/model/forward.py: ONNX Runtime, exported once per model, in fp32 or int8, or torch; auto = onnx
on CPU); fp32 backends share the units' reuse key (their vectors agree within 1e-5), onnx-int8 has units of its own.

GPU actors (``num_gpus`` > 0, fractions share a GPU): torch on the GPU Ray assigned, in fp16 by default
(``precision``; a non-fp32 precision is part of the reuse key), with a padded-token budget sized from the GPU's
memory (fastemb/accelerator.py). On a mixed cluster the encoder actors take the GPUs and the faiss build
(fastemb/index/build.py) runs as CPU tasks.

Shard rows: ``id``, ``chunk``, ``text``, ``thash`` (text hash), ``skip`` (reason, null when embedded) and
``vector`` (fixed-size list of float32, null when skipped). Units of input files are written to
``<emb_dir>/unit-<key>/``; a unit whose ``_SUCCESS`` file exists is reused on the next run.

Faults: Ray Data creates the encoder actors with ``max_restarts=-1`` and ``max_task_retries=-1`` (its default
for actor pools), so an actor whose process dies is restarted and its unfinished batches run again; a unit is
only published (``.tmp`` renamed) once all of its rows were written, and a crash of the whole job leaves the
finished units for the rerun. ``tests/test_cluster.py`` SIGKILLs an actor mid-build and checks the ids.

Test hook (off by default): when the environment variable ``FASTEMB_TEST_HOLD_FILE`` names a file as
``embed_corpus`` starts, an actor that has embedded a batch holds it while that file exists, before returning it (so
before its unit can be published), after writing ``<file>.<pid>.held`` (the unit's folder). The fault tests kill a
held actor: its unit is then provably unfinished. Unset, the cost is one ``None`` test per batch.

``on_this_node``: the unit folders are local to the driver's node (a staging folder, fastemb/storage.py), so the
shard writes run there; the encoder actors still run anywhere, and those on other nodes skip the peak-memory file.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fastemb.data.chunking import chunk_token_ids, pool_documents
from fastemb.index.corpus import CorpusScan, clean_texts, plan_units
from fastemb.index.shard_rows import peak_rss_mb, report_rss, shard_table
from fastemb.model.batching import embed_sequences

logger = logging.getLogger(__name__)
HOLD_ENV = "FASTEMB_TEST_HOLD_FILE"  # the test hook above


def this_node() -> dict:
    """Ray options that pin a task to the driver's node (for tasks reading or writing its local files)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)}


class EmbedActor:
    """Ray Data callable class: a pyarrow batch of (id, text) rows → embedding-shard rows."""

    def __init__(self, model: dict, id_column: str, text_column: str, max_batch_tokens: int | None = None,
                 threads: int = 1, chunking: dict | None = None, rss_dir: str | None = None, backend: str = "auto",
                 num_gpus: float = 0.0, precision: str = "auto", hold_file: str | None = None):
        import torch

        from fastemb.accelerator import batch_token_budget, inference_device, inference_precision
        from fastemb.model.encoder import Encoder
        from fastemb.model.forward import load_forward

        torch.set_num_threads(threads)
        device = inference_device(num_gpus, "embed.num_gpus")
        dtype = inference_precision(precision, device)
        self.encoder = Encoder.from_spec(model).eval().to(device)
        self.forward = load_forward(self.encoder, model["base"], backend, threads, device, "embed.backend", dtype)
        self.tok = self.encoder.tokenizer
        self.id_column, self.text_column = id_column, text_column
        config = self.encoder.transformer.config
        self.max_batch_tokens = batch_token_budget(
            max_batch_tokens, device, config.hidden_size, getattr(config, "num_attention_heads", 12),
            self.encoder.max_length, num_gpus, 4 if dtype == "fp32" else 2)
        self.max_rows = 512 if device == "cpu" else 8192  # rows per forward pass (GPU: the token budget decides)
        self.chunking, self.rss_dir = chunking, rss_dir
        self.hold_file = hold_file

    def _sequences(self, texts: list[str]) -> list[tuple[int, int, list[int]]]:
        if not texts:  # a batch of bad rows only
            return []
        if self.chunking:
            return chunk_token_ids(self.tok, texts, self.encoder.max_length, self.chunking["overlap"],
                                   self.chunking.get("max_chunks"))
        enc = self.tok(texts, truncation=True, max_length=self.encoder.max_length)["input_ids"]
        return [(i, 0, ids) for i, ids in enumerate(enc)]

    def embed_token_ids(self, seqs: list[list[int]]) -> np.ndarray:
        """Embed token-id sequences with length bucketing; rows come back in input order."""
        return embed_sequences(self.forward, seqs, self.tok.pad_token_id or 0, self.encoder.dim,
                               self.max_batch_tokens, self.max_rows)

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids, texts, reasons = clean_texts(batch.column(self.id_column).combine_chunks(),
                                          batch.column(self.text_column).combine_chunks())
        good = [i for i, r in enumerate(reasons) if r is None]
        seqs = self._sequences([texts[i] for i in good])
        vectors = self.embed_token_ids([s for _, _, s in seqs])
        if seqs and self.chunking and self.chunking.get("entries") == "document":  # one entry per document
            seqs, vectors = pool_documents(seqs, vectors, self.encoder.normalize)
        rows_id, rows_chunk, rows_text, rows_skip, vec_rows = [], [], [], [], []
        for i, r in enumerate(reasons):  # skipped rows keep their place, with a reason and no vector
            if r is not None:
                rows_id.append(ids[i]); rows_chunk.append(0); rows_text.append(None); rows_skip.append(r)
                vec_rows.append(-1)
        for n, (j, c, s) in enumerate(seqs):
            rows_id.append(ids[good[j]]); rows_chunk.append(c); rows_skip.append(None); vec_rows.append(n)
            rows_text.append(self.tok.decode(s, skip_special_tokens=True) if self.chunking else texts[good[j]])
        report_rss(self.rss_dir)
        if self.hold_file is not None:
            self._hold()
        return shard_table(rows_id, rows_chunk, rows_text, rows_skip, vec_rows, vectors, self.encoder.dim)

    def _hold(self) -> None:
        """The test hook (module docstring): wait, the batch unreturned, while the hold file exists."""
        if not os.path.exists(self.hold_file):
            return
        unit = str(Path(self.rss_dir).parent) if self.rss_dir else None
        Path(f"{self.hold_file}.{os.getpid()}.held").write_text(json.dumps({"pid": os.getpid(), "unit": unit}))
        while os.path.exists(self.hold_file):
            time.sleep(0.05)



def unit_dir(emb_dir: Path, unit: dict) -> Path:
    return emb_dir / f"unit-{unit['unit']:05d}-{unit['key']}"


def _unit_stats(path: Path) -> dict:
    """Counts of one finished unit, from its shards' ``skip`` column."""
    rows, skipped = 0, Counter()
    for f in sorted(path.glob("*.parquet")):
        col = pq.read_table(f, columns=["skip"]).column("skip")
        rows += len(col)
        skipped.update(v for v in col.drop_null().to_pylist())
    return {"rows_out": rows, "skipped": dict(skipped)}


def encoder_pool(ds, actor_kwargs: dict, *, num_actors: int, threads_per_actor: int, batch_rows: int,
                 num_gpus: float = 0.0, actor: type | None = None):
    """``ds`` mapped by a pool of ``num_actors`` ``actor`` (default :class:`EmbedActor`; ``threads_per_actor`` CPUs
    each, and ``num_gpus`` GPUs each when > 0: the pool then waits for GPU nodes, and the actors run torch on them)."""
    import ray

    resources = {"num_cpus": threads_per_actor}
    if num_gpus > 0:
        resources["num_gpus"] = num_gpus
        if ray.cluster_resources().get("GPU", 0) < num_gpus:
            logger.warning(f"embed.num_gpus: {num_gpus:g} per actor, but the cluster has "
                           f"{ray.cluster_resources().get('GPU', 0):g} GPUs now: the encoder actors wait for a GPU "
                           "node (an autoscaling cluster adds one)")
    return ds.map_batches(actor or EmbedActor, batch_size=batch_rows, batch_format="pyarrow",
                          compute=ray.data.ActorPoolStrategy(size=num_actors), **resources,
                          fn_constructor_kwargs={**actor_kwargs, "threads": threads_per_actor, "num_gpus": num_gpus})


def data_context_for_jobs() -> None:
    """No plan dumps. Progress: Ray Data draws bars in a terminal and logs it at INFO elsewhere, which
    ``fastemb.logs`` hides unless FASTEMB_LOG_LEVEL=DEBUG (a log file gets the per-unit lines instead)."""
    import ray

    ray.data.DataContext.get_current().print_on_execution_start = False


def embed_corpus(scan: CorpusScan, emb_dir: str | Path, model: dict, *, id_column: str = "id",
                 text_column: str = "text", num_actors: int = 2, threads_per_actor: int = 1,
                 batch_rows: int = 1024, max_batch_tokens: int | None = None, rows_per_unit: int = 200_000,
                 chunking: dict | None = None, on_this_node: bool = False,
                 on_unit: Callable[[Path], None] | None = None, backend: str = "auto", num_gpus: float = 0.0,
                 precision: str = "auto", images: dict | None = None) -> dict:
    """Embed every unit not already on disk; returns per-unit stats, reuse counts and worker peak memory.

    ``on_unit`` is called with each finished unit folder, reused ones included (e.g. to upload it); ``backend``:
    the actors' forward-pass engine (``embed.backend``); ``num_gpus``, ``precision``: GPUs per actor and the dtype
    of their forward pass (``embed.num_gpus``, ``embed.precision``). ``images``: ``text_column`` holds images, embedded
    by :class:`fastemb.index.embed_images.ImageEmbedActor` (``{"source": "bytes" | "path", "root": ...}``)."""
    import ray

    from fastemb.accelerator import pool_precision

    emb_dir = Path(emb_dir)
    emb_dir.mkdir(parents=True, exist_ok=True)
    key = {"model": model, "chunking": chunking, "columns": [id_column, text_column]}
    if images:  # only then: the text units built before stay reusable
        key["images"] = images
    if pool_precision(precision, num_gpus) != "fp32":  # half-precision vectors differ by ~1e-3: units of their own
        key["precision"] = pool_precision(precision, num_gpus)
    if backend == "onnx-int8":  # int8 vectors differ from fp32's by ~1e-2: units of their own
        key["backend"] = backend
    salt = json.dumps(key, sort_keys=True)
    units = plan_units(scan, rows_per_unit, salt)
    data_context_for_jobs()
    stats, reused, worker_rss, started = [], 0, 0.0, time.time()
    for unit in units:
        final = unit_dir(emb_dir, unit)
        if (final / "_SUCCESS").exists():
            reused += 1
            stats.append(json.loads((final / "_SUCCESS").read_text()))
            if on_unit:
                on_unit(final)
            continue
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        rss_dir = tmp / "_rss"
        rss_dir.mkdir(parents=True)
        t0 = time.time()
        # The unit's texts are read and cut into batch-sized blocks first (object store, not the driver): a full
        # pool of encoder actors holds every CPU, and Ray Data's file listing / repartition tasks need one.
        ds = ray.data.read_parquet(unit["files"], filesystem=scan.fs, num_cpus=0).select_columns(
            [id_column, text_column])
        ds = ds.repartition(max(num_actors, -(-unit["rows"] // batch_rows))).materialize()
        if images:
            from fastemb.index.embed_images import ImageEmbedActor

            actor, kwargs = ImageEmbedActor, {"model": model, "id_column": id_column, "image_column": text_column,
                                              "rss_dir": str(rss_dir), **images}
        else:
            actor, kwargs = EmbedActor, {"model": model, "id_column": id_column, "text_column": text_column,
                                         "max_batch_tokens": max_batch_tokens, "chunking": chunking,
                                         "rss_dir": str(rss_dir), "backend": backend, "precision": precision,
                                         "hold_file": os.environ.get(HOLD_ENV)}
        ds = encoder_pool(ds, kwargs, num_actors=num_actors, threads_per_actor=threads_per_actor,
                          batch_rows=batch_rows, num_gpus=num_gpus, actor=actor)
        ds.write_parquet(str(tmp), ray_remote_args={"num_cpus": 0, **(this_node() if on_this_node else {})})
        rss = [float(p.read_text()) for p in rss_dir.glob("*.rss")]
        shutil.rmtree(rss_dir)
        worker_rss = max([worker_rss, *rss])
        st = {**unit, **_unit_stats(tmp), "embed_s": round(time.time() - t0, 2), "worker_peak_rss_mb": max(rss or [0]),
              "actors_used": len(rss)}
        (tmp / "_SUCCESS").write_text(json.dumps(st))
        shutil.rmtree(final, ignore_errors=True)  # an unfinished copy fetched from a store
        os.replace(tmp, final)
        stats.append(st)
        if on_unit:
            on_unit(final)
        logger.info(f"unit {unit['unit'] + 1}/{len(units)}: {unit['rows']} rows in {st['embed_s']:.1f}s")
    return {"units": stats, "units_reused": reused, "embed_s": round(time.time() - started, 2),
            "worker_peak_rss_mb": worker_rss, "shard_dirs": [str(unit_dir(emb_dir, u)) for u in units]}


def shard_files(shard_dirs: list[str]) -> list[str]:
    """Embedding-shard parquet files in unit order (file names sorted inside a unit)."""
    return [str(f) for d in shard_dirs for f in sorted(Path(d).glob("*.parquet"))]


def embed_text_list(texts: list[str], model: dict, *, num_actors: int = 2, threads_per_actor: int = 1,
                    batch_rows: int = 1024, max_batch_tokens: int | None = None, backend: str = "auto",
                    num_gpus: float = 0.0, precision: str = "auto") -> tuple[np.ndarray, Counter]:
    """Embed an in-memory list of texts on a pool of :class:`EmbedActor` (Ray Data, forward pass on ``backend``, on
    GPUs with ``num_gpus``); returns the (n, d) float32 vectors in input order, as the model outputs them (rows of
    skipped texts are zero), and skips by reason."""
    import ray

    data_context_for_jobs()
    table = pa.table({"id": pa.array([str(i) for i in range(len(texts))]), "text": pa.array(texts, pa.string())})
    blocks = max(num_actors, -(-len(texts) // batch_rows))
    # Cut into blocks first (materialised): a full actor pool holds every CPU, and repartition needs one.
    ds = encoder_pool(ray.data.from_arrow(table).repartition(blocks).materialize(),
                      {"model": model, "id_column": "id", "text_column": "text", "max_batch_tokens": max_batch_tokens,
                       "backend": backend, "precision": precision},
                      num_actors=num_actors, threads_per_actor=threads_per_actor, batch_rows=batch_rows,
                      num_gpus=num_gpus)
    out: np.ndarray | None = None
    skipped: Counter = Counter()
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        rows = np.array([int(i) for i in batch.column("id").to_pylist()])
        skip = batch.column("skip").to_pylist()
        vec = batch.column("vector")
        vec = vec.combine_chunks() if isinstance(vec, pa.ChunkedArray) else vec
        dim = vec.type.list_size
        if out is None:
            out = np.zeros((len(texts), dim), dtype=np.float32)
        good = np.array([s is None for s in skip], dtype=bool)
        skipped.update(s for s in skip if s is not None)
        if good.any():
            flat = vec.filter(pa.array(good))
            out[rows[good]] = np.asarray(flat.flatten(), dtype=np.float32).reshape(-1, dim)
    if out is None:
        raise ValueError("nothing to embed")
    return out, skipped
