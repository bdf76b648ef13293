"""Typed job specs: one schema shared by the CLI, Ray Jobs, Tune and the tests.

A spec is YAML (or a dict) validated by pydantic; unknown keys are refused, and every error
names the bad field, what it got and what is allowed. ``key=value`` overrides (dotted paths, values
parsed as YAML) are applied before validation.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from fastemb.errors import FastembError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class SpecError(FastembError, ValueError):
    """A job spec that cannot be used; the message names each bad field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(_Section):
    """The base model and how texts become vectors."""
    base: str = Field("all-MiniLM-L6-v2", description="alias or local folder (sentence-transformers or HF)")
    pooling: Literal["mean", "cls"] | None = Field(None, description="default: the model's own")
    normalize: bool | None = Field(None, description="L2-normalise embeddings; default: the model's own")
    max_length: int = Field(64, gt=0, le=8192, description="tokens per text")
    synonyms: str | None = Field(None, description="synonym dictionary (.tsv/.json/.yaml, variant -> canonical) "
                                                   "applied before tokenising; saved into the exported model")


class AdapterSpec(_Section):
    """Bottleneck adapters (Houlsby et al., 2019) after each chosen layer's feed-forward block (and attention block
    with ``placement: houlsby``); the base is frozen, only adapters (and new token rows) train."""
    size: int = Field(64, gt=0, le=8192, description="bottleneck dimension")
    layers: list[int] | None = Field(None, min_length=1, description="layers that get adapters (0-based); "
                                     "default: all")
    placement: Literal["pfeiffer", "houlsby"] = Field("pfeiffer", description="pfeiffer: after the feed-forward "
                                                      "block; houlsby: after the attention block too")
    activation: Literal["gelu", "relu", "tanh"] = "gelu"
    train_new_tokens: bool = Field(True, description="the embedding rows of model.new_tokens train too")

    @field_validator("layers")
    @classmethod
    def _sorted_unique(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (any(i < 0 for i in v) or sorted(set(v)) != v):
            raise ValueError(f"expected increasing, distinct layer indices >= 0, got {v}")
        return v


class StudentModelSpec(ModelSpec):
    """The model a training job tunes; optionally a smaller student made by keeping some of the base's layers."""
    keep_layers: list[int] | None = Field(None, min_length=1, description="keep these transformer layers of the "
                                          "base (0-based, BERT-like models), e.g. [0, 2, 4]")
    num_layers: int | None = Field(None, gt=0, description="keep this many evenly spaced layers (first and last included)")
    new_tokens: list[str] | str | None = Field(None, description="domain terms added to the tokenizer as single "
                                               "tokens: a list, or a text file with one term a line (read when the "
                                               "spec is validated); each new embedding row starts as the mean of the "
                                               "term's sub-token rows (fastemb/model/new_tokens.py)")
    adapters: AdapterSpec | None = Field(None, description="train bottleneck adapters with the base frozen "
                                         "(fastemb/model/adapters.py)")

    @field_validator("new_tokens")
    @classmethod
    def _terms(cls, v: list[str] | str | None) -> list[str] | None:
        from fastemb.model.new_tokens import read_terms

        return None if v is None else read_terms(v)

    @field_validator("keep_layers")
    @classmethod
    def _sorted_unique(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (any(i < 0 for i in v) or sorted(set(v)) != v):
            raise ValueError(f"expected increasing, distinct layer indices >= 0, got {v}")
        return v

    @model_validator(mode="after")
    def _one_way(self) -> "StudentModelSpec":
        if self.keep_layers is not None and self.num_layers is not None:
            raise ValueError("model.keep_layers and model.num_layers: give one of them, not both")
        return self


class DataSpec(_Section):
    """Training pairs and the evaluation sets."""
    train: str = Field("wordnet", description="'wordnet' (shipped) or a pairs file/folder (parquet or jsonl); "
                                              "with format raw: 'wordnet' (the definitions) or a text file/folder")
    format: Literal["pairs", "raw"] = Field("pairs", description="raw: unlabeled text, each text its own positive "
                                            "(SimCSE-style domain pre-training, fastemb/data/raw_text.py)")
    text_column: str = Field("text", min_length=1, description="format raw (and simcse tasks): the column "
                                                                "holding the texts")
    max_pairs: int | None = Field(None, gt=0, description="use at most this many pairs (raw: texts; seeded sample)")
    eval: str = Field("wordnet", description="'wordnet' or a folder with {dev,test}_{queries,corpus}.parquet")
    test_queries: int | None = Field(None, gt=0, description="limit test queries (default: all)")
    dev_queries: int | None = Field(None, gt=0, description="limit dev queries used during training")
    dev_corpus: int | None = Field(None, gt=0, description="limit the dev corpus to the relevant texts plus others, "
                                                          "this many in all (cheaper dev evaluations)")


class LossSpec(_Section):
    """InfoNCE settings."""
    temperature: float = Field(0.05, gt=0, le=10)
    similarity: Literal["cosine", "dot"] = "cosine"
    gather_across_workers: bool = True
    mask_false_negatives: bool = True
    hard_negatives: int = Field(0, ge=0, le=64, description="hard negatives per query taken from the pairs")


class NegativeRulesSpec(_Section):
    """How hard negatives are picked from each query's faiss top-K (fastemb/mine/select.py)."""
    top_k: int = Field(100, gt=0, le=10_000, description="candidates retrieved per query")
    range_min: int = Field(0, ge=0, description="skip the first ranks (0 = the most similar candidate)")
    range_max: int | None = Field(None, gt=0, description="ignore ranks ≥ this (default: top_k)")
    relative_margin: float | None = Field(0.05, ge=0, lt=1, description="drop candidates scoring above "
                                          "(1 - margin) x the positive's score (TopK-PercPos; 0.05 = 95%)")
    absolute_margin: float | None = Field(None, description="drop candidates scoring above positive - margin")
    sampling: Literal["top", "random"] = "top"
    query_chunk: int = Field(4096, gt=0, description="queries searched per faiss call")
    seed: int = 13

    @model_validator(mode="after")
    def _window(self) -> "NegativeRulesSpec":
        if self.range_max is not None and not self.range_min < self.range_max <= self.top_k:
            raise ValueError(f"need range_min < range_max <= top_k, got {self.range_min}, {self.range_max}, "
                             f"{self.top_k}")
        if self.range_min >= self.top_k:
            raise ValueError(f"range_min ({self.range_min}) must be < top_k ({self.top_k})")
        return self

    def rules(self, num_negatives: int):
        """The selection rules (``fastemb.mine.select.NegativeRules``) taking ``num_negatives`` per query."""
        from fastemb.mine.select import NegativeRules

        return NegativeRules(num_negatives, self.range_min, self.range_max, self.relative_margin,
                             self.absolute_margin, self.sampling)


class NegativePoolSpec(NegativeRulesSpec):
    """ANCE-style dynamic hard negatives (fastemb/train/negative_pool.py): every ``refresh_every`` steps the current
    model re-embeds a pool of candidate texts and every training query's negatives are mined again from it."""
    refresh_every: int = Field(..., gt=0, description="optimizer steps between refreshes")
    pool_size: int = Field(20_000, gt=0, description="candidate texts: the task's distinct positives, a seeded "
                                                     "sample of at most this many")
    batch_size: int = Field(128, gt=0, description="texts per forward pass when re-embedding")
    mine_at_start: bool = Field(False, description="mine before the first step even when every pair brings its "
                                                   "own negatives (pairs without negatives always are)")


class TaskSpec(_Section):
    """One task of a multi-task run: its data, its sampling weight and its loss overrides."""
    name: str = Field(..., pattern=r"^[A-Za-z0-9_-]+$")
    kind: Literal["pairs", "simcse"] = Field("pairs", description="pairs: (query, positive[, negatives]) rows; "
                                             "simcse: unsupervised, each text is its own positive (dropout noise)")
    data: str = Field(..., description="pairs: 'wordnet' or a pairs file/folder; simcse: 'wordnet' (definitions) "
                                       "or a parquet file with a text column")
    max_pairs: int | None = Field(None, gt=0, description="use at most this many rows (seeded sample)")
    weight: float = Field(1.0, gt=0, description="the task is drawn for a micro-batch with probability ∝ weight")
    loss: dict[str, Any] = Field(default_factory=dict, description="overrides of the job's loss section")
    distill: bool = Field(False, description="apply the job's distill terms to this task's batches")
    refresh_negatives: bool = Field(True, description="the job's negatives_pool refreshes this task's hard negatives")

    @field_validator("loss")
    @classmethod
    def _loss_overrides(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            LossSpec.model_validate(v)
        except ValidationError as err:
            e = err.errors()[0]
            raise ValueError(f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})") from None
        return v

    def effective_loss(self, base: LossSpec) -> LossSpec:
        """The job's loss section with this task's overrides."""
        return LossSpec.model_validate({**base.model_dump(), **self.loss})


class KLTerm(_Section):
    """KL between teacher and student score distributions over each query's candidates (fastemb/losses/distill_kl.py)."""
    weight: float = Field(1.0, gt=0)
    temperature: float = Field(0.05, gt=0, le=10, description="student temperature")
    teacher_temperature: float | None = Field(None, gt=0, description="default: the student temperature")
    in_batch: bool = Field(True, description="the other queries' positives are candidates too")


class MarginMSETerm(_Section):
    """MSE of score margins s(q,p) - s(q,n) against the teacher's (fastemb/losses/margin_mse.py)."""
    weight: float = Field(1.0, gt=0)


class EmbeddingMSETerm(_Section):
    """MSE of (projected) student embeddings of queries and positives onto the teacher's."""
    weight: float = Field(1.0, gt=0)
    project: bool | None = Field(None, description="learned projection; default: when dimensions differ")


class HiddenStateTerm(_Section):
    """Intermediate hidden-state distillation (teacher run online; same tokenizer needed)."""
    weight: float = Field(1.0, gt=0)
    layer_map: dict[int, int] | None = Field(None, description="student layer -> teacher layer (0 = embeddings); "
                                                                "default: uniform m -> m*N/M")


class AttentionTerm(_Section):
    """MiniLM last-layer attention (and value-relation) distillation (teacher run online; same tokenizer, heads)."""
    weight: float = Field(1.0, gt=0)
    value_relation: bool = True


class DistillSpec(_Section):
    """Distillation from a teacher, combined with the InfoNCE term; a term given is a term used."""
    teacher: str = Field("all-mpnet-base-v2", description="alias or local sentence-transformers / HF folder")
    teacher_pooling: Literal["mean", "cls"] | None = Field(None, description="default: the teacher's own")
    teacher_max_length: int | None = Field(None, gt=0, le=8192, description="default: model.max_length")
    infonce_weight: float = Field(1.0, ge=0, description="weight of the InfoNCE term (0: distillation only)")
    kl: KLTerm | None = None
    margin_mse: MarginMSETerm | None = None
    embedding_mse: EmbeddingMSETerm | None = None
    hidden_state: HiddenStateTerm | None = None
    attention: AttentionTerm | None = None
    embed: EmbedSpec = Field(default_factory=lambda: EmbedSpec(),
                             description="Ray Data actors embedding the texts with the teacher (once, stored)")

    @model_validator(mode="after")
    def _some_term(self) -> "DistillSpec":
        if not any((self.kl, self.margin_mse, self.embedding_mse, self.hidden_state, self.attention)):
            raise ValueError("distill: give at least one of kl, margin_mse, embedding_mse, hidden_state, attention")
        return self

    @property
    def online_teacher(self) -> bool:
        """Per-token terms need the teacher in the training loop."""
        return self.hidden_state is not None or self.attention is not None


class TrainSpec(_Section):
    """Optimisation and distribution (Ray Train workers driving DeepSpeed)."""
    num_workers: int = Field(2, ge=1, le=4096)
    cpus_per_worker: int = Field(1, ge=1)
    use_gpu: bool = False
    zero_stage: Literal[0, 1, 2] = 2
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    micro_batch_size: int = Field(32, gt=0, description="pairs per worker per step")
    grad_accum: int = Field(1, ge=1)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps")
    lr: float = Field(5e-5, gt=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float = Field(1.0, ge=0, description="0 disables clipping")
    group_by_length: bool = True
    length_window: int = Field(32, ge=1, description="micro-batches sorted together when grouping by length")
    checkpoint_every: int = Field(100, gt=0, description="steps between checkpoints")
    eval_every: int | None = Field(None, gt=0, description="steps between dev evaluations (default: 4 per run)")
    log_every: int = Field(10, gt=0)
    max_failures: int = Field(2, ge=0)
    seed: int = 42

    @model_validator(mode="after")
    def _precision_on_cpu(self) -> "TrainSpec":
        if self.precision == "fp16" and not self.use_gpu:
            raise ValueError("train.precision: fp16 needs a GPU (use_gpu: true); on CPU use fp32 or bf16")
        return self


class RayRunSpec(_Section):
    """Where the job runs."""
    address: str | None = Field(None, description="join this Ray cluster; default: start an embedded local one")
    num_cpus: int | None = Field(None, gt=0, description="CPUs for the embedded local Ray (default: all)")


URI_STORAGE_JOBS = ("train", "index")  # jobs that stage their run folder for an object-store storage_path


class _RunJob(_Section):
    """A job that writes to ``{storage_path}/{name}/`` and runs on Ray."""
    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$")
    storage_path: str = Field("runs", description="output root: a local/shared path, or for train and index jobs "
                              "an object-store URI (s3://, gs://, ...; see fastemb/storage.py)")
    ray: RayRunSpec = RayRunSpec()

    @field_validator("storage_path")
    @classmethod
    def _absolute_storage(cls, v: str) -> str:
        return v if "://" in v else os.path.abspath(os.path.expanduser(v))

    @model_validator(mode="after")
    def _uri_storage(self) -> "_RunJob":
        job = getattr(self, "job", None)
        if "://" in self.storage_path and job not in URI_STORAGE_JOBS:
            raise ValueError(f"storage_path: an object-store URI is supported by {', '.join(URI_STORAGE_JOBS)} jobs; "
                             f"a {job} job needs a local or shared filesystem path (mounted at the same path on "
                             "every node)")
        return self

    @property
    def run_dir(self) -> Path:
        """``{storage_path}/{name}``; for a URI, the local staging folder that mirrors it (fastemb/storage.py)."""
        if "://" in self.storage_path:
            from fastemb.storage import staging_dir

            return staging_dir(self.storage_path, self.name)
        return Path(self.storage_path) / self.name

    @property
    def output_location(self) -> str:
        """Where the run's outputs end up: the run folder, or ``{uri}/{name}``."""
        if "://" in self.storage_path:
            return f"{self.storage_path.partition('?')[0].rstrip('/')}/{self.name}"
        return str(self.run_dir)


class ContinualSpec(_Section):
    """Continual learning: start from a registry version, then promote the result or keep production."""
    registry: str = Field(..., description="model registry (path or URI) holding the starting version")
    from_version: str = Field("production", description="'production' or a version name such as v0003")
    promote: Literal["auto", "never", "force"] = Field(
        "auto", description="auto: promote only if the candidate scores at least production + min_gain on the "
                            "job's test set; never: only register; force: promote regardless")
    metric: Literal["ndcg@10", "mrr@10", "recall@10", "recall@100", "map@100"] = "ndcg@10"
    min_gain: float = Field(0.0, description="required improvement over production (auto)")


class TrainJob(_RunJob):
    """``fastemb train``: contrastive fine-tuning with evaluation before and after."""
    job: Literal["train"] = "train"
    name: str = Field("contrastive", pattern=r"^[A-Za-z0-9_.-]+$")
    model: StudentModelSpec = StudentModelSpec()
    data: DataSpec = DataSpec()
    loss: LossSpec = LossSpec()
    train: TrainSpec = TrainSpec()
    continual: ContinualSpec | None = Field(None, description="fine-tune a registry version and gate its promotion")
    distill: DistillSpec | None = Field(None, description="distil a teacher into the model (fastemb/train/distill.py)")
    tasks: list[TaskSpec] | None = Field(None, min_length=1, description="multi-task training: each micro-batch "
                                         "comes from one task, drawn by weight (fastemb/train/tasks.py)")
    negatives_pool: NegativePoolSpec | None = Field(None, description="refresh the hard negatives with the current "
                                                    "model during training (fastemb/train/negative_pool.py)")

    @model_validator(mode="after")
    def _distill_needs_candidates(self) -> "TrainJob":
        d = self.distill
        if d is None or self.tasks:
            return self
        _check_distill_candidates(d, self.loss.hard_negatives, "loss.hard_negatives")
        return self

    @model_validator(mode="after")
    def _raw_text(self) -> "TrainJob":
        if self.data.format != "raw":
            return self
        for field, given in (("tasks", self.tasks), ("distill", self.distill),
                             ("loss.hard_negatives", self.loss.hard_negatives)):
            if given:
                raise ValueError(f"{field}: not with data.format: raw (each text is its own positive; "
                                 "for a raw-text task in a multi-task run use tasks.N.kind: simcse)")
        return self

    @model_validator(mode="after")
    def _tasks_and_pool(self) -> "TrainJob":
        _check_tasks(self)
        _check_negatives_pool(self)
        return self


def _check_tasks(job: "TrainJob") -> None:
    """Multi-task rules: distinct names, data given per task, distill marked on the tasks it applies to."""
    if not job.tasks:
        return
    given = [f for f in ("train", "max_pairs") if getattr(job.data, f) != DataSpec.model_fields[f].default]
    if given:  # compared with the defaults: a spec re-validated from its dump has every field "set"
        raise ValueError(f"data.{given[0]}: with tasks, each task names its data (tasks.N.data, "
                         "tasks.N.max_pairs); remove it from data")
    if job.continual is not None:
        raise ValueError("continual: not supported with tasks (its data fingerprint is of data.train)")
    seen: set[str] = set()
    for i, task in enumerate(job.tasks):
        if task.name in seen:
            raise ValueError(f"tasks.{i}.name: duplicate task name {task.name!r}")
        seen.add(task.name)
        k = task.effective_loss(job.loss).hard_negatives
        if task.kind == "simcse" and k:
            raise ValueError(f"tasks.{i}.loss.hard_negatives: a simcse task has no negatives (got {k})")
        if task.distill:
            if job.distill is None:
                raise ValueError(f"tasks.{i}.distill: needs the job's distill section")
            if task.kind == "simcse":
                raise ValueError(f"tasks.{i}.distill: not for a simcse task (no teacher scores for it)")
            _check_distill_candidates(job.distill, k, f"tasks.{i}.loss.hard_negatives")
    if job.distill is not None and not any(t.distill for t in job.tasks):
        raise ValueError("distill: with tasks, mark the tasks it applies to (tasks.N.distill: true)")


def _check_negatives_pool(job: "TrainJob") -> None:
    """The pool refreshes hard negatives, so some task must use them, and no stored teacher score may go stale."""
    if job.negatives_pool is None:
        return
    tasks = [(f"tasks.{i}", t.effective_loss(job.loss).hard_negatives * t.refresh_negatives, t.distill)
             for i, t in enumerate(job.tasks)] if job.tasks else [("loss", job.loss.hard_negatives, True)]
    if not any(k for _, k, _ in tasks):
        raise ValueError("negatives_pool: needs hard negatives to refresh (loss.hard_negatives >= 1, or on a task "
                         "with refresh_negatives: true)")
    d = job.distill
    stale = [name for name, k, distilled in tasks if k and distilled and d is not None and (d.kl or d.margin_mse)]
    if stale:
        raise ValueError(f"negatives_pool: distill.kl / distill.margin_mse use teacher scores stored once for the "
                         f"pairs' own negatives; refreshed negatives would not match them ({stale[0]})")


def _check_distill_candidates(d: DistillSpec, k: int, k_field: str) -> None:
    """The distillation terms need candidates besides the positive."""
    if d.margin_mse and k < 1:
        raise ValueError(f"distill.margin_mse: needs hard negatives ({k_field} >= 1)")
    if d.kl and k < 1 and not d.kl.in_batch:
        raise ValueError(f"distill.kl: needs candidates besides the positive: {k_field} >= 1 or "
                         "distill.kl.in_batch: true")


class EvalJob(_Section):
    """``fastemb eval``: retrieval metrics of one model on an evaluation split."""
    job: Literal["eval"] = "eval"
    model: ModelSpec = ModelSpec()
    data: DataSpec = DataSpec()
    split: Literal["dev", "test"] = "test"
    output: str | None = Field(None, description="write the metrics JSON here")


class CorpusSpec(_Section):
    """The documents to index: parquet with an id and a text column."""
    path: str = Field("wordnet", description="'wordnet' (117k definitions), 'wordnet:test' (a labeled corpus), "
                                              "or a parquet file / folder of shards / pyarrow-fsspec URI")
    id_column: str = "id"
    text_column: str = "text"
    on_bad_file: Literal["skip", "fail"] = Field("skip", description="an unreadable file: count it and go on, or stop")


class EmbedSpec(_Section):
    """The Ray Data embedding stage (a pool of encoder actors)."""
    num_actors: int = Field(2, ge=1, le=4096)
    threads_per_actor: int = Field(1, ge=1, le=256)
    batch_rows: int = Field(1024, gt=0, description="rows per map_batches call (sorted by length inside)")
    max_batch_tokens: int = Field(1024, gt=0, description="padded tokens per forward pass (length bucketing; ~1k keeps CPU activations in cache)")
    rows_per_unit: int = Field(200_000, gt=0, description="input rows per reusable unit of embedding shards")
    output: str | None = Field(None, description="embedding shards folder (default: <run>/embeddings); reused")
    backend: Literal["torch", "onnx", "auto"] = Field(
        "auto", description="forward-pass engine: onnx = ONNX Runtime (exported once per model, cached; vectors equal "
        "torch's within 1e-5; ~2x torch per CPU thread); auto = onnx on CPU, torch on GPU")


class ChunkingSpec(_Section):
    """Long documents: token windows with overlap; search aggregates chunk scores per document."""
    enabled: bool = False
    overlap: int = Field(32, ge=0, description="tokens shared by consecutive chunks")
    max_chunks: int | None = Field(None, gt=0, description="at most this many chunks per document")
    aggregate: Literal["max", "mean"] = "max"


class CompressSpec(_Section):
    """Vector compression fitted on a sample, applied at index and query time."""
    method: Literal["none", "pca", "autoencoder", "matryoshka"] = "none"
    dim: int | None = Field(None, gt=0, description="output dimension (default: the model's)")
    params: dict[str, Any] = Field(default_factory=dict, description="method options, e.g. autoencoder epochs")

    @model_validator(mode="after")
    def _dim_needed(self) -> "CompressSpec":
        if self.method != "none" and self.dim is None:
            raise ValueError(f"compress.dim: required with compress.method={self.method}")
        return self


class IndexSpec(_Section):
    """The faiss index (PQ parameters from ``bytes_per_vector`` unless ``pq_m`` is given)."""
    type: Literal["flat", "ivf_flat", "pq", "ivf_pq", "opq_ivf_pq", "hnsw"] = "ivf_pq"
    bytes_per_vector: int = Field(48, gt=0, le=65536, description="PQ code bytes per vector (8-bit codes)")
    pq_m: int | None = Field(None, gt=0)
    pq_nbits: int = Field(8, ge=4, le=12)
    nlist: int | None = Field(None, gt=0, description="IVF lists (default ~4*sqrt(N))")
    hnsw_m: int = Field(32, ge=4, le=256)
    refine: Literal["none", "flat", "sqfp16", "sq8", "disk"] = Field(
        "none", description="re-rank candidates of a compressed index: in memory with the float vectors (flat) or "
        "finer codes (sqfp16, sq8); or disk: with fp16 vectors in refine_vectors.f16 next to the index, memory-mapped "
        "at search (2·d bytes per vector on disk, none in memory)")
    train_size: int = Field(100_000, gt=0, description="vectors sampled to train the quantizer/compressor")
    add_tasks: int | None = Field(None, gt=0, description="parallel add tasks (default: CPUs of the cluster)")
    nprobe: int = Field(16, gt=0)
    ef_search: int = Field(64, gt=0)
    k_factor: int | None = Field(None, gt=0, description="refine: re-rank k*k_factor candidates (default 4; "
                                 "10 with refine disk)")
    seed: int = 0

    @model_validator(mode="after")
    def _refine_needs_codes(self) -> "IndexSpec":
        if self.refine != "none" and self.type in ("flat", "hnsw"):
            raise ValueError(f"index.refine={self.refine!r} only makes sense with a compressed code "
                             f"(pq/ivf types), not index.type={self.type}")
        return self


class IndexEvalSpec(_Section):
    """Compression evaluation on a labeled split (recall@10 vs exact, nDCG@10, bytes, build time, latency)."""
    enabled: bool = False
    eval: str = Field("wordnet", description="'wordnet' or a folder with {split}_{queries,corpus}.parquet")
    split: Literal["dev", "test"] = "test"
    max_queries: int | None = Field(None, gt=0)
    latency_queries: int = Field(200, gt=0, description="queries timed one at a time for p50/p99")
    sweep: list[dict[str, Any]] = Field(default_factory=list,
                                        description="extra configurations: {name, compress: {...}, index: {...}}")


class IndexJob(_RunJob):
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


class SearchJob(_Section):
    """``fastemb search``: top-k documents of query texts in a built index."""
    job: Literal["search"] = "search"
    index_dir: str = Field(..., description="folder written by `fastemb index` (holds manifest.json), or its "
                           "object-store URI (the manifest's `location`; fetched into a local cache)")
    queries: list[str] = Field(..., min_length=1)
    k: int = Field(10, gt=0, le=10_000)
    nprobe: int | None = Field(None, gt=0)
    ef_search: int | None = Field(None, gt=0)
    output: str | None = Field(None, description="write the results JSON here")


class SearchSpace(_Section):
    """Ray Tune search space: bounds are log-uniform ranges, lists are choices."""
    temperature: list[float] = Field([0.01, 0.1], min_length=2, max_length=2, description="log-uniform [low, high]")
    lr: list[float] = Field([2e-5, 2e-4], min_length=2, max_length=2, description="log-uniform [low, high]")
    micro_batch_size: list[int] = Field([16, 32, 64], min_length=1, description="choice")
    pq_bytes: list[int] = Field([24, 48, 96], min_length=1, description="choice: PQ code bytes per vector")

    @field_validator("temperature", "lr")
    @classmethod
    def _ordered_positive(cls, v: list[float]) -> list[float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"expected [low, high] with 0 < low <= high, got {v}")
        return v


class TuneSpec(_Section):
    """How the search runs and what wins."""
    num_samples: int = Field(8, ge=1)
    search: Literal["optuna", "random"] = "optuna"
    scheduler: Literal["asha", "none"] = "asha"
    grace_period: int = Field(1, ge=1, description="ASHA: dev evaluations before a trial can be stopped")
    reduction_factor: int = Field(2, ge=2)
    max_concurrent_trials: int | None = Field(None, ge=1, description="default: cluster CPUs // CPUs per trial")
    min_compression: float = Field(16.0, ge=1, description="the winner must compress vectors at least this much")
    opq: bool = Field(True, description="rotate before PQ (OPQ)")
    max_failures: int = Field(1, ge=0, description="retries of a failing trial")
    registry: str | None = Field(None, description="register the winner in this model registry (path or URI)")
    include_default: bool = Field(True, description="run the spec's own configuration as the first trial, so the "
                                                    "winner is compared with it in the same search")


class TuneJob(TrainJob):
    """``fastemb tune``: Ray Tune drives the training job; the objective is dev nDCG@10 after compression."""
    job: Literal["tune"] = "tune"  # type: ignore[assignment]
    name: str = Field("tune", pattern=r"^[A-Za-z0-9_.-]+$")
    tune: TuneSpec = TuneSpec()
    space: SearchSpace = SearchSpace()

    @model_validator(mode="after")
    def _no_distill(self) -> "TuneJob":
        if self.distill is not None:
            raise ValueError("distill: not supported by fastemb tune (teacher outputs are computed by fastemb train); "
                             "tune a contrastive job, then distil from its winner")
        for field in ("tasks", "negatives_pool"):
            if getattr(self, field) is not None:
                raise ValueError(f"{field}: not supported by fastemb tune; tune a single-task job without it")
        return self

    @model_validator(mode="after")
    def _default_inside_space(self) -> "TuneJob":
        if not self.tune.include_default:
            return self
        checks = (("loss.temperature", self.loss.temperature, "space.temperature", self.space.temperature, True),
                  ("train.lr", self.train.lr, "space.lr", self.space.lr, True),
                  ("train.micro_batch_size", self.train.micro_batch_size, "space.micro_batch_size",
                   self.space.micro_batch_size, False))
        for field, value, space_field, space, is_range in checks:
            inside = space[0] <= value <= space[1] if is_range else value in space
            if not inside:
                raise ValueError(f"{field}: {value} is the default trial (tune.include_default) but lies outside "
                                 f"{space_field} {space}; widen the space or set tune.include_default: false")
        return self


JOB_TYPES: dict[str, type[_Section]] = {"train": TrainJob, "eval": EvalJob, "index": IndexJob,
                                        "search": SearchJob, "tune": TuneJob}

import fastemb.serve.spec  # noqa: E402,F401  registers JOB_TYPES["serve"] (ServeJob, fastemb/serve/spec.py)
import fastemb.mine.spec  # noqa: E402,F401  registers JOB_TYPES["mine"] (MineJob, fastemb/mine/spec.py)
import fastemb.demo.spec  # noqa: E402,F401  registers JOB_TYPES["demo"] (DemoJob, fastemb/demo/spec.py)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested dict."""
    out = dict(raw)
    for item in overrides:
        if "=" not in item:
            raise SpecError(f"override {item!r}: expected key=value, e.g. train.lr=3e-5")
        key, value = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            child = node.get(p)
            node[p] = dict(child) if isinstance(child, dict) else {}
            node = node[p]
        node[parts[-1]] = yaml.safe_load(value)
    return out


def _format_errors(err: ValidationError, model: type[BaseModel]) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(spec)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            parent: Any = model
            for p in e["loc"][:-1]:
                parent = parent.model_fields[p].annotation if p in getattr(parent, "model_fields", {}) else None
            allowed = sorted(parent.model_fields) if parent is not None and hasattr(parent, "model_fields") else []
            msg = f"unknown key; allowed keys here: {', '.join(allowed)}"
        elif "input" in e and not isinstance(e["input"], dict):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"  {field}: {msg}")
    return "invalid job spec:\n" + "\n".join(lines)


def parse_spec(raw: dict[str, Any], overrides: list[str] | None = None, job: str | None = None):
    """Validate a dict as a job spec (its ``job`` key or ``job`` picks the schema)."""
    raw = apply_overrides(raw or {}, overrides or [])
    kind = raw.get("job", job or "train")
    if kind not in JOB_TYPES:
        raise SpecError(f"invalid job spec:\n  job: unknown job {kind!r}; allowed: {', '.join(JOB_TYPES)}")
    model = JOB_TYPES[kind]
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise SpecError(_format_errors(err, model)) from None


def load_spec(path: str | os.PathLike, overrides: list[str] | None = None, job: str | None = None):
    """Read a YAML job spec from ``path``, apply overrides and validate it."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"job spec {str(p)!r} not found")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise SpecError(f"job spec {p}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"job spec {p}: expected a mapping at the top level")
    return parse_spec(raw, overrides, job)
