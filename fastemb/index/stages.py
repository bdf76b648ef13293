"""The index job's stages, shared by the job (fastemb/index/job.py) and its compression evaluation
(fastemb/index/evaluate.py): the Ray Data embedding of a corpus and the faiss build from its embedding shards."""
from __future__ import annotations

import logging
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from fastemb.index.build import build_index
from fastemb.index.corpus import CorpusScan
from fastemb.index.embed import embed_corpus, shard_files
from fastemb.index.factory import factory_string
from fastemb.index.refine import SCALES_FILE, STORE_FILES, refine_k_factor, store_dtype
from fastemb.index.shards import kept_counts, plan_duplicates, write_id_map
from fastemb.spec import CompressSpec, IndexJob, IndexSpec
from fastemb.storage import is_uri

EMBEDDINGS = "embeddings"  # the run folder's embedding units (default embed.output)


def model_dict(spec: IndexJob) -> dict:
    """The model section as the encoder actors' argument (a dict: it crosses into Ray actors); it also salts the
    reusable embedding units' keys."""
    m = spec.model
    out = {"base": m.base, "pooling": m.pooling, "normalize": m.normalize, "max_length": m.max_length}
    if m.synonyms:  # only when set: the dict salts the reusable embedding units
        out["synonyms"] = m.synonyms
    return out


def staged(spec: IndexJob) -> bool:
    """The run folder is the driver's local staging folder of an object-store ``storage_path``."""
    return is_uri(spec.storage_path)


def embeddings_dir(spec: IndexJob) -> Path:
    """Where the job's embedding units go: ``embed.output``, or ``<run_dir>/embeddings``."""
    return Path(spec.embed.output).expanduser() if spec.embed.output else spec.run_dir / EMBEDDINGS


def embed_stage(spec: IndexJob, scan: CorpusScan, emb_dir: Path, on_unit=None) -> dict:
    """Run (or reuse) the Ray Data embedding of a scanned corpus."""
    e, c = spec.embed, spec.chunking
    chunking = {"overlap": c.overlap, "max_chunks": c.max_chunks} if c.enabled else None
    if chunking and c.entries == "document":  # (only then: the embeddings of chunk indexes built before stay reusable)
        chunking["entries"] = "document"
    return embed_corpus(scan, emb_dir, model_dict(spec), id_column=spec.corpus.id_column,
                        text_column=spec.corpus.content_column, rows_per_unit=e.rows_per_unit, chunking=chunking,
                        on_this_node=staged(spec), on_unit=on_unit, images=image_options(spec), **e.pool_options())


def image_options(spec: IndexJob) -> dict | None:
    """For an image corpus, the image encoder actors' settings (where the images are, relative paths' root); None
    for a text corpus. The model must be an image–text folder (its image tower embeds the images)."""
    c = spec.corpus
    if not c.images:
        return None
    from fastemb.data.pairs import DataError
    from fastemb.model.encoder import resolve_model_path
    from fastemb.model.image_text import is_image_text_folder

    if not is_image_text_folder(resolve_model_path(spec.model.base)):
        raise DataError(f"model.base {spec.model.base}: not an image–text model folder, so it cannot embed the images "
                        f"of corpus.{'image_column' if c.image_column else 'path_column'}; give a folder written by an "
                        "image_text training job (fastemb/model/image_text.py)")
    root = None
    if c.path_column and not is_uri(c.path):
        path = Path(c.path).expanduser().resolve()
        root = str(path if path.is_dir() else path.parent)
    return {"source": "bytes" if c.image_column else "path", "root": root}


def index_shards(shard_dirs: list[str], duplicate_ids: set[str], out_dir: Path, index: IndexSpec,
                 compress: CompressSpec, on_this_node: bool = False, log_level: int = logging.INFO) -> dict:
    """Build ``out_dir/{index.faiss, ids.parquet, compressor/}`` (+ the vector file with refine disk) from
    embedding shards; returns build info (the build's line is logged at ``log_level``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = shard_files(shard_dirs)
    drop, dup_docs = plan_duplicates(files, duplicate_ids)
    counts = kept_counts(files, drop)
    n = sum(counts)
    if n == 0:
        raise ValueError("no embedded rows to index (every row was skipped)")
    dim = pq.read_schema(files[0]).field("vector").type.list_size
    fit = None  # the compressor to fit: a dict, as it goes to a Ray task
    if compress.method != "none":
        fit = {"method": compress.method, "dim": compress.dim, "params": compress.params}
        dim = compress.dim
    ic = index
    factory = factory_string(ic.type, dim, n, nlist=ic.nlist, bytes_per_vector=ic.bytes_per_vector, pq_m=ic.pq_m,
                             pq_nbits=ic.pq_nbits, hnsw_m=ic.hnsw_m, refine=ic.refine)
    info = build_index(files, counts, drop, out_dir, ic.type, factory, train_size=ic.train_size, compress=fit,
                       add_tasks=ic.add_tasks, seed=ic.seed, on_this_node=on_this_node,
                       refine_store=ic.refine == "disk", store_dtype=ic.refine_dtype, log_level=log_level,
                       train_on_gpu=ic.train_on_gpu)
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


def _refine_info(out_dir: Path, index: IndexSpec, rows: int, dim: int) -> dict:
    """How the index re-ranks; for ``disk``, the vector file kept beside it (not counted in memory bytes)."""
    mode = index.refine
    if mode == "none":
        return {"mode": mode}
    out = {"mode": mode, "k_factor": refine_k_factor(mode, index.k_factor, index.type), "in_memory": mode != "disk"}
    if mode == "disk":
        name = STORE_FILES[index.refine_dtype]
        dtype, size = store_dtype(name), (out_dir / name).stat().st_size
        if size != rows * dim * dtype.itemsize:
            raise RuntimeError(f"{name} holds {size} bytes, not {rows} × {dim} {dtype}: build is inconsistent")
        out |= {"file": name, "dtype": dtype.name, "bytes": size, "bytes_per_vector_on_disk": size // rows}
        if index.refine_dtype == "int8":
            out["scales_file"] = SCALES_FILE
    return out
