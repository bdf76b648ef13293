"""The ``index`` job spec (``job: index``): the corpus, chunking, compression, the faiss index and its evaluation."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from fastemb.spec.base import RunJob, Section, input_path, not_path
from fastemb.spec.sections import EmbedSpec, ModelSpec


class CorpusSpec(Section):
    """The documents to index: parquet with an id and a text column; or, for an image–text model, an id and an image
    column (``image_column``: encoded image bytes) or an image file column (``path_column``)."""
    path: str = input_path("wordnet", description="'wordnet' (117k definitions), 'wordnet:test' (a labeled "
                                                   "corpus), or a parquet file / folder of shards / pyarrow-fsspec URI")
    id_column: str = "id"
    text_column: str = "text"
    image_column: str | None = Field(None, min_length=1, description="index images: the column of encoded image "
                                     "bytes (PNG, JPEG, GIF, WEBP, BMP), embedded by an image–text model's image tower")
    path_column: str | None = not_path(None, min_length=1, description="index images: the name of the column "
                                       "holding image locations (relative ones: to the corpus folder, or to the "
                                       "corpus file's folder); the column's values are read, not this name")
    on_bad_file: Literal["skip", "fail"] = Field("skip", description="an unreadable file: count it and go on, or stop")

    @model_validator(mode="after")
    def _one_image_source(self) -> CorpusSpec:
        if self.image_column and self.path_column:
            raise ValueError("corpus: give image_column (image bytes) or path_column (image files), not both")
        return self

    @property
    def images(self) -> bool:
        """The corpus holds images (embedded by the image tower), not texts."""
        return bool(self.image_column or self.path_column)

    @property
    def content_column(self) -> str:
        """The column the encoders read: the image bytes, the image paths, or the texts."""
        return self.image_column or self.path_column or self.text_column


class ChunkingSpec(Section):
    """Long documents: token windows with overlap; search aggregates chunk scores per document."""
    enabled: bool = False
    overlap: int = Field(32, ge=0, description="tokens shared by consecutive chunks")
    max_chunks: int | None = Field(None, gt=0, description="at most this many chunks per document")
    entries: Literal["chunk", "document"] = Field("chunk", description="index entries: one per chunk (search "
                                                  "groups them by document), or one per document (the mean of its "
                                                  "chunk vectors)")
    aggregate: Literal["max", "mean", "attention"] = Field("max", description="a document's score from its retrieved "
                                                           "chunks' scores (fastemb/data/chunking.py)")


class CompressSpec(Section):
    """Vector compression fitted on a sample, applied at index and query time."""
    method: Literal["none", "pca", "autoencoder", "matryoshka"] = "none"
    dim: int | None = Field(None, gt=0, description="output dimension (default: the model's)")
    params: dict[str, Any] = Field(default_factory=dict, description="method options, e.g. autoencoder epochs")

    @model_validator(mode="after")
    def _dim_needed(self) -> CompressSpec:
        if self.method != "none" and self.dim is None:
            raise ValueError(f"compress.dim: required with compress.method={self.method}")
        return self


class IndexSpec(Section):
    """The faiss index (PQ parameters from ``bytes_per_vector`` unless ``pq_m`` is given; ``binary``: one sign bit per
    dimension, searched by Hamming distance, over unit-norm vectors)."""
    type: Literal["flat", "ivf_flat", "pq", "ivf_pq", "opq_ivf_pq", "hnsw", "binary"] = "ivf_pq"
    bytes_per_vector: int = Field(48, gt=0, le=65536, description="PQ code bytes per vector (8-bit codes)")
    pq_m: int | None = Field(None, gt=0)
    pq_nbits: int = Field(8, ge=4, le=12)
    nlist: int | None = Field(None, gt=0, description="IVF lists (default ~4*sqrt(N))")
    hnsw_m: int = Field(32, ge=4, le=256)
    refine: Literal["none", "flat", "sqfp16", "sq8", "disk"] = Field(
        "none", description="re-rank candidates of a compressed index: in memory with the float vectors (flat) or "
        "finer codes (sqfp16, sq8); or disk: with fp16 vectors in refine_vectors.f16 next to the index, memory-mapped "
        "at search (2·d bytes per vector on disk, none in memory; d with refine_dtype int8)")
    refine_dtype: Literal["float16", "int8"] = Field(
        "float16", description="refine disk: the vectors on disk as float16, or int8 with a per-dimension scale "
        "calibrated on the training sample (refine_vectors.i8 + refine_scales.npy; half the bytes)")
    train_size: int = Field(100_000, gt=0, description="vectors sampled to train the quantizer/compressor")
    train_on_gpu: bool = Field(False, description="the training task asks Ray for a GPU and runs the IVF coarse "
                               "quantizer's k-means there; needs the faiss-gpu wheel on that node (README: GPUs; with "
                               "faiss-cpu it trains on CPU and says so); the index file is the same")
    add_tasks: int | None = Field(None, gt=0, description="parallel add tasks (default: CPUs of the cluster)")
    nprobe: int = Field(16, gt=0)
    ef_search: int = Field(64, gt=0)
    k_factor: int | None = Field(None, gt=0, description="refine: re-rank k*k_factor candidates (default 4; "
                                 "10 with refine disk; 20 for index.type binary)")
    seed: int = 0

    @model_validator(mode="after")
    def _refine_needs_codes(self) -> IndexSpec:
        if self.refine != "none" and self.type in ("flat", "hnsw"):
            raise ValueError(f"index.refine={self.refine!r} only makes sense with a compressed code "
                             f"(pq/ivf types), not index.type={self.type}")
        if self.refine_dtype != "float16" and self.refine != "disk":
            raise ValueError(f"index.refine_dtype={self.refine_dtype!r} is the dtype of the vectors kept on disk: it "
                             f"needs index.refine=disk, not {self.refine!r}")
        if self.type == "binary":
            if self.refine not in ("none", "disk"):
                raise ValueError(f"index.refine={self.refine!r} keeps refine codes in memory, which defeats "
                                 "index.type=binary (d/8 bytes per vector): use index.refine=disk (float16 or int8 "
                                 "vectors on disk) or none")
            unused = {"pq_m": self.pq_m, "nlist": self.nlist, "pq_nbits": None if self.pq_nbits == 8 else self.pq_nbits}
            for name, value in unused.items():
                if value is not None:
                    raise ValueError(f"index.{name}={value} does not apply to index.type=binary (one bit per "
                                     "dimension, no PQ or IVF): leave it out")
        return self


class IndexEvalSpec(Section):
    """Compression evaluation on a labeled split (recall@10 vs exact, nDCG@10, bytes, build time, latency)."""
    enabled: bool = False
    eval: str = input_path("wordnet", description="'wordnet' or a folder with {split}_{queries,corpus}.parquet")
    split: Literal["dev", "test"] = "test"
    max_queries: int | None = Field(None, gt=0)
    latency_queries: int = Field(200, gt=0, description="queries timed one at a time for p50/p99")
    sweep: list[dict[str, Any]] = Field(default_factory=list,
                                        description="extra configurations: {name, compress: {...}, index: {...}}")


class IndexJob(RunJob):
    """``fastemb index``: embed a corpus with Ray Data and build a (compressed) faiss index."""
    job: Literal["index"] = "index"
    name: str = Field("index", pattern=r"^[A-Za-z0-9_.-]+$")
    model: ModelSpec = ModelSpec()
    corpus: CorpusSpec = CorpusSpec()
    embed: EmbedSpec = EmbedSpec()
    chunking: ChunkingSpec = ChunkingSpec()
    compress: CompressSpec = CompressSpec()
    index: IndexSpec = IndexSpec()
    evaluate: IndexEvalSpec = IndexEvalSpec()

    def sweep_config(self, entry: dict[str, Any]) -> tuple[IndexSpec, CompressSpec]:
        """A sweep entry's index and compression sections: the job's with the entry's changes (``compress`` given:
        instead of the job's)."""
        unknown = sorted(set(entry.get("index", {})) - set(IndexSpec.model_fields))
        if unknown:
            raise ValueError(f"index.{unknown[0]}: unknown key; allowed keys here: {', '.join(IndexSpec.model_fields)}")
        index = IndexSpec.model_validate(self.index.model_copy(update=entry.get("index", {})).model_dump())
        base_compress = {"method": "none", "dim": None, "params": {}}
        compress = CompressSpec.model_validate({**base_compress, **entry["compress"]}) if "compress" in entry \
            else self.compress
        return index, compress

    @model_validator(mode="after")
    def _images_are_whole_entries(self) -> IndexJob:
        if self.corpus.images and self.chunking.enabled:
            raise ValueError("chunking.enabled: an image corpus (corpus.image_column / path_column) has no tokens to "
                             "chunk; leave chunking off")
        if self.corpus.images and self.evaluate.enabled:
            raise ValueError("evaluate.enabled: the compression evaluation runs on text sets; leave it off for an "
                             "image corpus")
        return self

    @model_validator(mode="after")
    def _binary_needs_unit_vectors(self) -> IndexJob:
        if self.index.type == "binary" and self.model.normalize is False and self.compress.method == "none":
            raise ValueError("index.type=binary needs normalised vectors (sign bits, inner-product rescoring): set "
                             "model.normalize=true or choose another index.type")
        return self

    @model_validator(mode="after")
    def _sweep_entries_are_valid(self) -> IndexJob:
        """A sweep entry inherits the job's index section: checked now, not after the corpus is embedded."""
        for n, entry in enumerate(self.evaluate.sweep if self.evaluate.enabled else []):
            try:
                self.sweep_config(entry)
            except ValueError as err:  # a ValidationError is one too
                msgs = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in err.errors()) \
                    if isinstance(err, ValidationError) else str(err)
                raise ValueError(f"evaluate.sweep.{n} ({entry.get('name', 'unnamed')}): {msgs}") from None
        return self


