"""The ``train`` job spec (``job: train``): optimisation and distribution, multi-task training, distillation terms,
refreshed hard negatives, continual learning, and the rules that tie them together."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from fastemb.spec.base import RunJob, Section, input_path, output_path
from fastemb.spec.sections import (DataSpec, EmbedSpec, GeneralEvalSpec, LossSpec, MergeSpec, NegativeRulesSpec,
                                   StudentModelSpec)


class NegativePoolSpec(NegativeRulesSpec):
    """ANCE-style dynamic hard negatives (fastemb/train/negative_pool.py): every ``refresh_every`` steps the current
    model re-embeds a pool of candidate texts and every training query's negatives are mined again from it."""
    refresh_every: int = Field(..., gt=0, description="optimizer steps between refreshes")
    pool_size: int = Field(20_000, gt=0, description="candidate texts: the task's distinct positives, a seeded "
                                                     "sample of at most this many")
    batch_size: int = Field(128, gt=0, description="texts per forward pass when re-embedding")
    mine_at_start: bool = Field(False, description="mine before the first step even when every pair brings its "
                                                   "own negatives (pairs without negatives always are)")


class TaskSpec(Section):
    """One task of a multi-task run: its data, its sampling weight and its loss overrides."""
    name: str = Field(..., pattern=r"^[A-Za-z0-9_-]+$")
    kind: Literal["pairs", "simcse", "image_text"] = Field(
        "pairs", description="pairs: (query, positive[, negatives]) rows; simcse: unsupervised, each text is its own "
        "positive (dropout noise); image_text: images with captions (the job's image_text section; the other tasks' "
        "texts then go through the two-tower model's text side)")
    data: str = input_path(..., description="pairs: 'wordnet' or a pairs file/folder; simcse: 'wordnet' "
                                            "(definitions) or a parquet file with a text column; image_text: an "
                                            "image–caption parquet file or folder")
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


class KLTerm(Section):
    """KL between teacher and student score distributions over each query's candidates (fastemb/losses/distill_kl.py)."""
    weight: float = Field(1.0, gt=0)
    temperature: float = Field(0.05, gt=0, le=10, description="student temperature")
    teacher_temperature: float | None = Field(None, gt=0, description="default: the student temperature")
    in_batch: bool = Field(True, description="the other queries' positives are candidates too")


class MarginMSETerm(Section):
    """MSE of score margins s(q,p) - s(q,n) against the teacher's (fastemb/losses/margin_mse.py)."""
    weight: float = Field(1.0, gt=0)


class EmbeddingMSETerm(Section):
    """MSE of (projected) student embeddings of queries and positives onto the teacher's."""
    weight: float = Field(1.0, gt=0)
    project: bool | None = Field(None, description="learned projection; default: when dimensions differ")
    target: Literal["own", "positive"] = Field(
        "own", description="own: each text onto the teacher's embedding of the same text; positive: the query and "
        "the positive both onto the teacher's embedding of the positive (multilingual distillation: the positive is "
        "the English text, the query its translation; the teacher embeds only the positives)")


class MultilingualSpec(Section):
    """Multilingual knowledge distillation (Reimers & Gurevych 2020) on parallel text (fastemb/data/parallel.py):
    ``data.train`` is a parallel parquet file (english, translation, language; fastemb/data/build_parallel.py), each
    row trains the student to map both the English text and its translation onto the teacher's vector of the English
    text (``distill.embedding_mse`` with ``target: positive``)."""
    languages: list[str] = Field(..., min_length=1, description="locale names of the languages to train on "
                                 "(the language column of the parallel text: de, fr, pt_BR, ...)")
    temperature: float = Field(1.0, ge=1.0, le=100, description="language sampling: language l gets a share ∝ "
                               "weight_l · n_l^(1/temperature) of the data.max_pairs budget (1: as in the data; "
                               "larger: small languages upsampled, so they are not drowned)")
    weights: dict[str, float] = Field(default_factory=dict, description="per-language sampling multipliers "
                                      "(default 1)")
    test: str | None = input_path(None, description="held-out parallel parquet file (other string families): "
                                  "translation retrieval per language, base and distilled, in the report")
    test_pairs: int = Field(1000, gt=0, description="test pairs per language at most (seeded sample)")
    min_test_pairs: int = Field(10, gt=0, description="a language with fewer test pairs is reported, not scored")
    unk_warn: float = Field(0.5, gt=0, le=1, description="warn when more than this share of a language's tokens "
                            "are unknown to the student's tokenizer")

    @model_validator(mode="after")
    def _weights_known(self) -> "MultilingualSpec":
        unknown = sorted(set(self.weights) - set(self.languages))
        if unknown:
            raise ValueError(f"weights: {unknown} not in languages {self.languages}")
        if any(w <= 0 for w in self.weights.values()):
            raise ValueError("weights: must be > 0")
        return self


class HiddenStateTerm(Section):
    """Intermediate hidden-state distillation (teacher run online; same tokenizer needed)."""
    weight: float = Field(1.0, gt=0)
    layer_map: dict[int, int] | None = Field(None, description="student layer -> teacher layer (0 = embeddings); "
                                                                "default: uniform m -> m*N/M")


class AttentionTerm(Section):
    """MiniLM last-layer attention (and value-relation) distillation (teacher run online; same tokenizer, heads)."""
    weight: float = Field(1.0, gt=0)
    value_relation: bool = True


class DistillSpec(Section):
    """Distillation from a teacher, combined with the InfoNCE term; a term given is a term used."""
    teacher: str = input_path("all-mpnet-base-v2", description="alias or local sentence-transformers / HF folder")
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


class LongDocsSpec(Section):
    """Long documents (``data.format: long_docs``): each document cut into chunks of ``model.max_length`` tokens,
    trained with the hierarchical InfoNCE loss (fastemb/losses/hierarchical.py: a chunk-level and a document-level
    term, weighted), and scored per document in the job's evaluations (fastemb/eval/long_docs.py)."""
    overlap: int = Field(16, ge=0, description="tokens shared by consecutive chunks (less than model.max_length - 2)")
    max_chunks: int = Field(8, gt=0, le=512, description="training: the first this many chunks of a document (the "
                            "rest are dropped and counted in the report's pairs.truncated)")
    chunk_weight: float = Field(1.0, ge=0, description="weight of the chunk-level term (0: document level only)")
    doc_weight: float = Field(1.0, ge=0, description="weight of the document-level term (0: chunk level only)")
    positive: Literal["max", "attention"] = Field("max", description="chunk-level positive: the document's best "
                                                  "chunk, or its chunks pooled by the query's attention")
    doc_score: Literal["max", "mean", "attention"] = Field("max", description="evaluations: a document's score "
                                                           "from its chunks' scores (fastemb/data/chunking.py)")
    late_chunking: bool = Field(False, description="evaluations: embed each window of up to the model's position "
                                "limit once and mean-pool each chunk's tokens (Günther et al. 2024), instead of "
                                "embedding every chunk on its own")
    eval_max_chunks: int | None = Field(None, gt=0, description="evaluations: at most this many chunks per document "
                                        "(default: all of it)")

    @model_validator(mode="after")
    def _some_term(self) -> "LongDocsSpec":
        if self.chunk_weight == 0 and self.doc_weight == 0:
            raise ValueError("long_docs: chunk_weight and doc_weight are both 0; give one of them a weight")
        return self

    def eval_options(self, chunk_length: int, temperature: float) -> dict:
        """What fastemb.eval.long_docs.evaluate_long_docs takes: chunking, document score, late chunking."""
        return {"chunk_length": chunk_length, "overlap": self.overlap, "max_chunks": self.eval_max_chunks,
                "doc_score": self.doc_score, "late_chunking": self.late_chunking, "temperature": temperature}


class MultiViewSpec(Section):
    """Multi-view items (``data.format: multi_view``): each item given by several views (fastemb/data/multi_view.py),
    trained with the multi-view InfoNCE loss (fastemb/losses/multi_view.py: query ↔ each view and view ↔ view of the
    same item, per-view weights), and scored per item from its views in the job's evaluations
    (fastemb/eval/multi_view.py)."""
    views: list[str] = Field(["attributes", "title", "description", "tags"], min_length=1,
                             description="the view names trained and scored (the keys of the data's views column "
                             "and the view columns of the evaluation corpus); other names in the data are ignored "
                             "and counted")
    weights: dict[str, float] = Field(default_factory=dict, description="per-view weights (default 1 each): in both "
                                      "loss terms, and in the fused item vector with fuse: weights")
    query_weight: float = Field(1.0, ge=0, description="weight of the query ↔ view term")
    view_weight: float = Field(1.0, ge=0, description="weight of the view ↔ view term (0: query ↔ view only)")
    item_score: Literal["fused", "max"] = Field("fused", description="evaluations: an item's score is the query "
                                                "against its fused vector, or the max over its views' vectors")
    fuse: Literal["mean", "weights"] = Field("mean", description="the fused vector: the mean of the item's present "
                                             "view vectors, or their mean weighted by weights")

    @field_validator("views")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        bad = [x for x in v if not x or not x.replace("_", "").replace("-", "").isalnum()]
        if bad:
            raise ValueError(f"views: {bad[0]!r} is not a view name (letters, digits, _ and -)")
        if len(set(v)) != len(v):
            raise ValueError(f"views: {sorted(x for x in set(v) if v.count(x) > 1)} given twice; name each once")
        return v

    @model_validator(mode="after")
    def _known_weights(self) -> "MultiViewSpec":
        unknown = sorted(set(self.weights) - set(self.views))
        if unknown:
            raise ValueError(f"multi_view.weights: unknown view name(s) {unknown}; the views are {self.views} "
                             "(add them to multi_view.views or remove the weights)")
        bad = sorted(k for k, w in self.weights.items() if not w >= 0)
        if bad:
            raise ValueError(f"multi_view.weights: {bad[0]} must be >= 0 (got {self.weights[bad[0]]})")
        if sum(self.view_weights) == 0:
            raise ValueError("multi_view.weights: every view weighs 0; give one of them a weight")
        if self.query_weight == 0 and self.view_weight == 0:
            raise ValueError("multi_view: query_weight and view_weight are both 0; give one of them a weight")
        return self

    @property
    def view_weights(self) -> list[float]:
        """One weight per view, in ``views`` order."""
        return [float(self.weights.get(v, 1.0)) for v in self.views]

    def eval_options(self, eval_dir: str) -> dict:
        """What fastemb.eval.multi_view.evaluate_multi_view takes (besides the encoder, the set and the split)."""
        return {"eval_dir": eval_dir, "views": list(self.views), "weights": self.view_weights,
                "item_score": self.item_score, "fuse": self.fuse}


class ImageTextSpec(Section):
    """Image–text alignment (``data.format: image_text``): a two-tower model (fastemb/model/image_text.py: the text
    encoder of ``model.base`` and an image tower, each projected into one space) trained with the symmetric
    image–text InfoNCE loss (fastemb/losses/clip.py), images decoded and augmented on Ray Data
    (fastemb/data/image_stream.py), evaluated text → image and image → text (fastemb/eval/image_text.py)."""
    vision: str = input_path("builtin", description="'builtin' (a small ConvNeXt trained from scratch) or a local "
                             "transformers vision model folder with its preprocessor_config.json (CLIP vision, ViT, "
                             "ConvNeXt, ...)")
    image_size: int = Field(64, ge=16, le=1024, description="builtin tower: pictures resized to this square")
    widths: list[int] = Field([32, 64, 128, 256], min_length=1, max_length=8, description="builtin tower: channels "
                              "of each ConvNeXt stage")
    depths: list[int] = Field([2, 2, 2, 2], min_length=1, max_length=8, description="builtin tower: blocks per stage")
    dim: int | None = Field(None, gt=0, le=8192, description="width of the shared space (default: the text "
                            "encoder's; then the text projection starts as the identity)")
    freeze: Literal["none", "text", "image"] = Field("none", description="text: the pretrained text tower locked "
                                                     "(LiT, Zhai et al. 2022, locks the pretrained tower); image: the "
                                                     "image tower locked (the frozen-random-tower ablation); none: "
                                                     "both train. Projections always train")
    text_lr_scale: float = Field(0.05, gt=0, le=1, description="the text tower's learning rate is train.lr times "
                                 "this (it starts pretrained; the image tower and projections train at train.lr)")
    augment: bool = Field(True, description="training images: a random crop of 70-100 % of the area (aspect kept "
                          "within 3/4-4/3); no flips (flags and writing would read wrong)")
    max_image_bytes: int = Field(20_000_000, gt=0, description="larger encoded images are skipped and counted")
    max_pixels: int = Field(40_000_000, gt=0, description="images with more pixels (decompression bombs) are "
                            "skipped and counted")
    eval_images: int | None = Field(None, gt=0, description="evaluations: at most this many images per split")
    decode_cpus: float = Field(0.0, ge=0, le=64, description="CPUs each Ray Data decoding task reserves; 0 (the "
                               "default) lets them run beside training workers that hold every CPU of a small "
                               "cluster; on a cluster with spare CPUs reserve some")

    @model_validator(mode="after")
    def _stages(self) -> "ImageTextSpec":
        if len(self.widths) != len(self.depths):
            raise ValueError(f"image_text.depths: {len(self.depths)} stages but image_text.widths has "
                             f"{len(self.widths)}; give one depth per width")
        if any(v <= 0 for v in self.widths + self.depths):
            raise ValueError("image_text.widths/depths: every entry must be > 0")
        return self


class TrainSpec(Section):
    """Optimisation and distribution (Ray Train workers driving DeepSpeed)."""
    num_workers: int = Field(2, ge=1, le=4096)
    cpus_per_worker: int = Field(1, ge=1)
    use_gpu: bool = Field(False, description="a GPU per worker (gpus_per_worker), DeepSpeed's CUDA accelerator and "
                          "NCCL (fastemb/accelerator.py; an explicit DS_ACCELERATOR in the environment still wins)")
    gpus_per_worker: float = Field(1.0, gt=0, le=64, description="with use_gpu: GPUs Ray gives each worker; below 1 "
                                   "the workers share GPUs and talk over gloo (NCCL refuses two ranks on one GPU)")
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage; 3 partitions the parameters too and "
                                            "gathers them on export (larger models across GPUs)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on a GPU that supports it, fp32 elsewhere (CPU, older GPUs)")
    micro_batch_size: int = Field(32, gt=0, description="pairs per worker per step: the loss's batch (its in-batch "
                                  "negatives), also with cache_mini_batch")
    cache_mini_batch: int | None = Field(None, gt=0, description="cached loss (GradCache, fastemb/train/"
                                         "grad_cache.py): embed this many texts per forward/backward pass, so "
                                         "memory is set by it while the loss still sees the whole micro-batch; "
                                         "at most micro_batch_size")
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

    @property
    def cached(self) -> bool:
        """Whether the cached loss runs: a cached mini-batch smaller than the batch (equal: one chunk, which is plain
        training, so it trains uncached)."""
        return self.cache_mini_batch is not None and self.cache_mini_batch < self.micro_batch_size

    @model_validator(mode="after")
    def _cache_fits_batch(self) -> "TrainSpec":
        if self.cache_mini_batch is not None and self.cache_mini_batch > self.micro_batch_size:
            raise ValueError(f"train.cache_mini_batch: {self.cache_mini_batch} is larger than the batch it caches "
                             f"(train.micro_batch_size {self.micro_batch_size}); use at most {self.micro_batch_size}"
                             ", or raise micro_batch_size")
        return self


class ContinualSpec(Section):
    """Continual learning: start from a registry version, then promote the result or keep production."""
    registry: str = output_path(..., description="model registry (path or URI) holding the starting version; the "
                                "trained version is registered there (written: shared storage or a URI)")
    from_version: str = Field("production", description="'production' or a version name such as v0003")
    promote: Literal["auto", "never", "force"] = Field(
        "auto", description="auto: promote only if the candidate scores at least production + min_gain on the "
                            "job's test set; never: only register; force: promote regardless")
    metric: Literal["ndcg@10", "mrr@10", "recall@10", "recall@100", "map@100"] = "ndcg@10"
    min_gain: float = Field(0.0, description="required improvement over production (auto)")


class Int8Spec(Section):
    """An int8 graph in the exported model (fastemb/model/quantize.py), kept only if its dev nDCG@10 is close to
    fp32's."""
    tolerance: float = Field(0.01, ge=0, le=1, description="largest relative loss of dev nDCG@10 against the fp32 "
                             "ONNX graph (0.01 = 1 %); past it the int8 file is not written and the report says why")
    weights: Literal["int8", "uint8"] = Field(
        "int8", description="the MatMul weights' type: int8 (symmetric, ONNX Runtime's fastest CPU kernels) or uint8 "
        "(asymmetric: about half the quality loss, slower; bench/int8.py measures both)")


class ExportSpec(Section):
    """What the exported model (``{run}/model``) runs with, and an optional merge with the base."""
    max_seq_length: int | None = Field(None, gt=0, le=8192, description="tokens per text of the exported model "
                                       "(sentence_bert_config.json); default: the base's own (256 for "
                                       "all-MiniLM-L6-v2), whatever model.max_length trained with")
    merge: MergeSpec | None = Field(None, description="interpolate the tuned weights with the base's (WiSE-FT); "
                                    "the unmerged model stays in {run}/model_unmerged (fastemb/merge/)")
    int8: Int8Spec | None = Field(None, description="also write onnx/model_qint8_avx512_vnni.onnx (int8, for "
                                  "backend: onnx-int8 and sentence-transformers' ONNX backend) after a dev check")


class TrainJob(RunJob):
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
    long_docs: LongDocsSpec | None = Field(None, description="long documents: chunking, the hierarchical loss's "
                                           "weights and document scoring (needs data.format: long_docs)")
    multi_view: MultiViewSpec | None = Field(None, description="multi-view items: the views, the multi-view loss's "
                                             "weights and item scoring (needs data.format: multi_view)")
    multilingual: MultilingualSpec | None = Field(None, description="multilingual distillation on parallel text "
                                                  "(data.train: english, translation, language)")
    image_text: ImageTextSpec | None = Field(None, description="image–text alignment: the image tower, freezing, "
                                             "augmentation and image limits (needs data.format: image_text)")
    export: ExportSpec = ExportSpec()
    general: GeneralEvalSpec | None = Field(GeneralEvalSpec(), description="a general-domain set scored for the "
                                            "base and the tuned model in the report; null: none")

    @model_validator(mode="after")
    def _distill_needs_candidates(self) -> TrainJob:
        d = self.distill
        if d is None or self.tasks:
            return self
        _check_distill_candidates(d, self.loss.hard_negatives, "loss.hard_negatives")
        return self

    @model_validator(mode="after")
    def _cache_without_distill(self) -> TrainJob:
        if self.train.cache_mini_batch is not None and self.distill is not None:
            raise ValueError("train.cache_mini_batch: the cached loss is for contrastive objectives; not with "
                             "distill (its per-token and teacher terms need the whole graph); remove one of them")
        return self

    @model_validator(mode="after")
    def _raw_text(self) -> TrainJob:
        if self.data.format != "raw":
            return self
        for field, given in (("tasks", self.tasks), ("distill", self.distill),
                             ("loss.hard_negatives", self.loss.hard_negatives)):
            if given:
                raise ValueError(f"{field}: not with data.format: raw (each text is its own positive; "
                                 "for a raw-text task in a multi-task run use tasks.N.kind: simcse)")
        return self

    @model_validator(mode="after")
    def _long_docs(self) -> TrainJob:
        given = self.data.format == "long_docs"
        if given != (self.long_docs is not None):
            raise ValueError("long_docs: data.format: long_docs and the long_docs section go together; "
                             + ("add a long_docs section (defaults: long_docs: {})" if given else
                                "set data.format: long_docs"))
        if not given:
            return self
        for field, value in (("tasks", self.tasks), ("distill", self.distill), ("negatives_pool", self.negatives_pool),
                             ("loss.hard_negatives", self.loss.hard_negatives),
                             ("loss.matryoshka_dims", self.loss.matryoshka_dims),
                             ("train.cache_mini_batch", self.train.cache_mini_batch)):
            if value:
                raise ValueError(f"{field}: not with data.format: long_docs (the hierarchical loss takes each "
                                 "document's chunks, the other documents' chunks are its negatives)")
        if self.long_docs.overlap >= self.model.max_length - 2:
            raise ValueError(f"long_docs.overlap: {self.long_docs.overlap} tokens must be less than a chunk's "
                             f"{self.model.max_length - 2} (model.max_length minus the special tokens)")
        return self

    @model_validator(mode="after")
    def _multi_view(self) -> TrainJob:
        given = self.data.format == "multi_view"
        if given != (self.multi_view is not None):
            raise ValueError("multi_view: data.format: multi_view and the multi_view section go together; "
                             + ("add a multi_view section (defaults: multi_view: {})" if given else
                                "set data.format: multi_view"))
        if not given:
            return self
        for field, value in (("tasks", self.tasks), ("distill", self.distill), ("negatives_pool", self.negatives_pool),
                             ("loss.hard_negatives", self.loss.hard_negatives),
                             ("loss.matryoshka_dims", self.loss.matryoshka_dims),
                             ("train.cache_mini_batch", self.train.cache_mini_batch),
                             ("multilingual", self.multilingual), ("long_docs", self.long_docs)):
            if value:
                raise ValueError(f"{field}: not with data.format: multi_view (the multi-view loss takes each item's "
                                 "views, the other items' views are its negatives)")
        return self

    @model_validator(mode="after")
    def _image_text(self) -> TrainJob:
        image_tasks = [i for i, t in enumerate(self.tasks or []) if t.kind == "image_text"]
        given = self.data.format == "image_text" or bool(image_tasks)
        if given != (self.image_text is not None):
            raise ValueError("image_text: data.format: image_text (or a task of kind image_text) and the image_text "
                             "section go together; " + ("add an image_text section (defaults: image_text: {})" if given
                                                        else "set data.format: image_text"))
        if not given:
            return self
        if self.tasks and not image_tasks:
            raise ValueError("tasks: with data.format: image_text, name the image task among the tasks "
                             "(tasks.N.kind: image_text, tasks.N.data: the image–caption file)")
        for i in image_tasks:
            if self.tasks[i].effective_loss(self.loss).hard_negatives:
                raise ValueError(f"tasks.{i}.loss.hard_negatives: an image_text task has no hard negatives")
        for field, value in (("distill", self.distill), ("negatives_pool", self.negatives_pool),
                             ("loss.hard_negatives", self.loss.hard_negatives),
                             ("loss.matryoshka_dims", self.loss.matryoshka_dims),
                             ("train.cache_mini_batch", self.train.cache_mini_batch),
                             ("multilingual", self.multilingual), ("long_docs", self.long_docs),
                             ("multi_view", self.multi_view), ("continual", self.continual),
                             ("export.merge", self.export.merge), ("export.int8", self.export.int8),
                             ("model.adapters", self.model.adapters), ("model.new_tokens", self.model.new_tokens)):
            if value:
                raise ValueError(f"{field}: not with data.format: image_text (pairs of an image and its captions, "
                                 "the other pairs' images and captions are the negatives)")
        if self.train.zero_stage == 3:
            raise ValueError("train.zero_stage: 3 is not supported with image_text; use 0, 1 or 2")
        return self

    @model_validator(mode="after")
    def _multilingual(self) -> TrainJob:
        if self.multilingual is None:
            return self
        d = self.distill
        if d is None or d.embedding_mse is None or d.embedding_mse.target != "positive":
            raise ValueError("multilingual: needs distill.embedding_mse with target: positive (the student maps the "
                             "English text and its translation onto the teacher's vector of the English text)")
        for field, given in (("tasks", self.tasks), ("negatives_pool", self.negatives_pool),
                             ("loss.hard_negatives", self.loss.hard_negatives), ("distill.kl", d.kl),
                             ("distill.margin_mse", d.margin_mse), ("continual", self.continual)):
            if given:
                raise ValueError(f"{field}: not with multilingual (parallel pairs have no negatives or teacher "
                                 "scores)")
        if self.data.format != "pairs":
            raise ValueError("multilingual: data.format must be pairs (data.train is the parallel file)")
        return self

    @model_validator(mode="after")
    def _tasks_and_pool(self) -> TrainJob:
        _check_tasks(self)
        _check_negatives_pool(self)
        return self

    @model_validator(mode="after")
    def _mergeable(self) -> TrainJob:
        merge = self.export.merge
        if merge is None:
            return self
        m = self.model
        unlike = {"model.keep_layers": m.keep_layers, "model.num_layers": m.num_layers, "model.adapters": m.adapters,
                  "model.new_tokens": m.new_tokens}  # each gives the tuned model another shape
        given = [field for field, value in unlike.items() if value]
        if given:
            raise ValueError(f"export.merge: with {given[0]} the tuned model's architecture or tokenizer differs from "
                             "the base's, so their weights cannot be interpolated; remove one of the two")
        if merge.weight is None and self.general is None:
            raise ValueError("export.merge: choosing the weight needs the general set (general.eval); set "
                             "export.merge.weight or keep the general section")
        return self


def _check_tasks(job: TrainJob) -> None:
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


def _check_negatives_pool(job: TrainJob) -> None:
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


