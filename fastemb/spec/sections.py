"""Sections shared by several job types: the model, its adapters, the data, the InfoNCE loss, the negative-selection
rules and the Ray Data embedding stage."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from fastemb.spec.base import Section, input_path, output_path

InferenceBackend = Literal["torch", "onnx", "onnx-int8", "auto"]  # forward-pass engines (fastemb/model/onnx_backend.py)
ONNX_BACKENDS = ("onnx", "onnx-int8")  # those run by ONNX Runtime, on CPU only


def _increasing_layers(v: list[int] | None) -> list[int] | None:
    if v is not None and (any(i < 0 for i in v) or sorted(set(v)) != v):
        raise ValueError(f"expected increasing, distinct layer indices >= 0, got {v}")
    return v


class ModelSpec(Section):
    """The base model and how texts become vectors."""
    base: str = input_path("all-MiniLM-L6-v2", description="alias or local folder (sentence-transformers or HF)")
    pooling: Literal["mean", "cls"] | None = Field(None, description="default: the model's own")
    normalize: bool | None = Field(None, description="L2-normalise embeddings; default: the model's own")
    max_length: int | None = Field(None, gt=0, le=8192, description="tokens per text; default: the model's own "
                                   "(sentence_bert_config.json max_seq_length, e.g. 256 for all-MiniLM-L6-v2)")
    synonyms: str | None = input_path(None, description="synonym dictionary (.tsv/.json/.yaml, variant -> canonical) "
                                                        "applied before tokenising; saved into the exported model")


class AdapterSpec(Section):
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
        return _increasing_layers(v)


class StudentModelSpec(ModelSpec):
    """The model a training job tunes; optionally a smaller student made by keeping some of the base's layers."""
    max_length: int = Field(64, gt=0, le=8192, description="tokens per text in training and its dev evaluations "
                            "(a speed knob): the exported model keeps the base's own length unless "
                            "export.max_seq_length says otherwise")
    keep_layers: list[int] | None = Field(None, min_length=1, description="keep these transformer layers of the "
                                          "base (0-based, BERT-like models), e.g. [0, 2, 4]")
    num_layers: int | None = Field(None, gt=0, description="keep this many evenly spaced layers (first and last included)")
    new_tokens: list[str] | str | None = input_path(None, description="domain terms added to the tokenizer as single "
                                                    "tokens: a list, or a text file with one term a line (read when "
                                                    "the spec is validated); each new embedding row starts as the mean "
                                                    "of the term's sub-token rows (fastemb/model/new_tokens.py)")
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
        return _increasing_layers(v)

    @model_validator(mode="after")
    def _one_way(self) -> "StudentModelSpec":
        if self.keep_layers is not None and self.num_layers is not None:
            raise ValueError("model.keep_layers and model.num_layers: give one of them, not both")
        return self


class EvalSetSpec(Section):
    """An evaluation set (a folder with ``{dev,test}_{queries,corpus}.parquet``, fastemb/data/eval_sets.py) and how
    much of it is used."""
    eval: str = input_path("wordnet", description="'wordnet' or a folder with {dev,test}_{queries,corpus}.parquet")
    test_queries: int | None = Field(None, gt=0, description="limit test queries (default: all)")
    dev_queries: int | None = Field(None, gt=0, description="limit dev queries (dev evaluations during training, the "
                                                           "merge weight's selection)")
    dev_corpus: int | None = Field(None, gt=0, description="limit the dev corpus to the relevant texts plus others, "
                                                          "this many in all (cheaper dev evaluations)")


class GeneralEvalSpec(EvalSetSpec):
    """A general-domain evaluation set scored for the base and the tuned model in every report: what training costs
    outside its domain. The shipped one (``debian-descriptions``, fastemb/data/build_debian.py): Debian package
    one-line descriptions searched against 2,000 long descriptions."""
    eval: str = input_path("debian-descriptions", description="'debian-descriptions' (shipped), 'wordnet', or a "
                           "folder with {dev,test}_{queries,corpus}.parquet (the data.eval format)")
    tolerance: float = Field(0.005, ge=0, le=1, description="general nDCG@10 may fall this much below the base's: "
                             "the bound of the merge weight's selection and of the gate")
    gate: bool = Field(False, description="registration refuses a model whose general test nDCG@10 is below the "
                       "base's minus tolerance (continual: not promoted; tune.registry: not registered)")


def weights_in_unit_interval(v: list[float]) -> list[float]:
    """Merge weights: each in [0, 1]; returned sorted, without repeats."""
    bad = [w for w in v if not 0 <= w <= 1]
    if bad:
        raise ValueError(f"every weight must lie in [0, 1], got {bad}")
    return sorted(set(v))


class MergeSpec(Section):
    """Weight-space merging of the tuned model with its base (WiSE-FT, Wortsman et al. 2022):
    θ = w·θ_tuned + (1 − w)·θ_base, with ``w`` fixed or chosen on the in-domain and general dev sets
    (fastemb/merge/select.py states the rule)."""
    weight: float | None = Field(None, ge=0, le=1, description="the tuned model's weight w (1: unmerged, 0: the "
                                 "base); default: chosen from grid")
    grid: list[float] = Field([0.5, 0.6, 0.7, 0.8, 0.9, 1.0], min_length=1,
                              description="weights tried when weight is not given (each in [0, 1])")

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: list[float]) -> list[float]:
        return weights_in_unit_interval(v)


class DataSpec(EvalSetSpec):
    """Training pairs and the evaluation sets."""
    train: str = input_path("wordnet", description="'wordnet' (shipped) or a pairs file/folder (parquet or jsonl); "
                                                   "with format raw: 'wordnet' (the definitions) or a text "
                                                   "file/folder")
    format: Literal["pairs", "raw", "long_docs", "multi_view", "image_text"] = Field(
        "pairs", description="raw: unlabeled text, each text its own positive (SimCSE-style domain pre-training, "
        "fastemb/data/raw_text.py); long_docs: (query, document or chunks) rows trained with the hierarchical loss "
        "(fastemb/data/long_docs.py; the job's long_docs section); multi_view: (query, views of an item) rows trained "
        "with the multi-view loss (fastemb/data/multi_view.py; the job's multi_view section); image_text: images with "
        "captions (fastemb/data/images.py; the job's image_text section)")
    text_column: str = Field("text", min_length=1, description="format raw (and simcse tasks): the column "
                                                                "holding the texts")
    max_pairs: int | None = Field(None, gt=0, description="use at most this many pairs (raw: texts; seeded sample)")


class LossSpec(Section):
    """InfoNCE settings."""
    temperature: float = Field(0.05, gt=0, le=10)
    similarity: Literal["cosine", "dot"] = "cosine"
    gather_across_workers: bool = True
    mask_false_negatives: bool = True
    hard_negatives: int = Field(0, ge=0, le=64, description="hard negatives per query taken from the pairs")
    matryoshka_dims: list[int] | None = Field(None, min_length=1, description="Matryoshka loss (fastemb/losses/"
                                              "matryoshka.py): InfoNCE on each of these nested prefixes of the "
                                              "embedding, increasing, at most the model's width, e.g. [64, 128, "
                                              "256, 384]; include the width to train the full vector too")
    matryoshka_weights: list[float] | None = Field(None, min_length=1, description="one weight per "
                                                   "matryoshka_dims entry (default: 1 each)")

    @field_validator("matryoshka_dims")
    @classmethod
    def _nested(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (v[0] <= 0 or any(a >= b for a, b in zip(v, v[1:]))):
            raise ValueError(f"expected increasing dimensions > 0 (e.g. [64, 128, 256, 384]), got {v}")
        return v

    @field_validator("matryoshka_weights")
    @classmethod
    def _positive_weights(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(w <= 0 for w in v):
            raise ValueError(f"expected weights > 0, got {v}")
        return v

    @model_validator(mode="after")
    def _weights_match(self) -> "LossSpec":
        w, d = self.matryoshka_weights, self.matryoshka_dims
        if w is not None and (d is None or len(w) != len(d)):
            raise ValueError(f"loss.matryoshka_weights: one weight per loss.matryoshka_dims entry ({d}), got {w}")
        return self


class NegativeRulesSpec(Section):
    """How hard negatives are picked from each query's faiss top-K (fastemb/mine/select.py:
    ``NegativeRules.from_spec``)."""
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


class EmbedSpec(Section):
    """The Ray Data embedding stage (a pool of encoder actors)."""
    num_actors: int = Field(2, ge=1, le=4096)
    threads_per_actor: int = Field(1, ge=1, le=256)
    num_gpus: float = Field(0.0, ge=0, le=64, description="GPUs per encoder actor (fractional: actors share a GPU); "
                            "> 0 runs torch on the GPU in embed.precision (fastemb/accelerator.py)")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="forward-pass dtype: auto = fp16 on a GPU, fp32 on CPU; fp16/bf16 need num_gpus > 0")
    batch_rows: int = Field(1024, gt=0, description="rows per map_batches call (sorted by length inside)")
    max_batch_tokens: int | None = Field(None, gt=0, description="padded tokens per forward pass (length bucketing); "
                                         "default: 1024 on CPU (activations stay in cache), on a GPU what half of "
                                         "the actor's share of its memory holds, at most 65,536")
    rows_per_unit: int = Field(200_000, gt=0, description="input rows per reusable unit of embedding shards")
    output: str | None = output_path(None, description="embedding shards folder (default: <run>/embeddings); reused")
    backend: InferenceBackend = Field(
        "auto", description="forward-pass engine: onnx = ONNX Runtime (exported once per model, cached; vectors equal "
        "torch's within 1e-5; ~2x torch per CPU thread); onnx-int8 = its int8 graph (the model folder's checked "
        "onnx/model_qint8_avx512_vnni.onnx, else quantized once in the cache); auto = onnx on CPU, torch on GPU")

    def pool_options(self) -> dict:
        """The encoder pool's settings, as keyword arguments of ``fastemb.index.embed.embed_corpus`` and
        ``embed_text_list``."""
        return self.model_dump(include={"num_actors", "threads_per_actor", "batch_rows", "max_batch_tokens", "backend",
                                        "num_gpus", "precision"})

    @model_validator(mode="after")
    def _gpu_settings(self) -> "EmbedSpec":
        if self.num_gpus == 0 and self.precision in ("fp16", "bf16"):
            raise ValueError(f"precision: {self.precision} needs a GPU (num_gpus > 0); on CPU use fp32 or auto")
        if self.num_gpus > 0 and self.backend in ONNX_BACKENDS:
            raise ValueError(f"backend: {self.backend} runs on CPU only (onnxruntime's CPU build); with num_gpus > 0 "
                             "use torch or auto")
        return self
