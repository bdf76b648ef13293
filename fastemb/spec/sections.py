"""Sections shared by several job types: the model, its adapters, the data, the InfoNCE loss, the negative-selection
rules and the Ray Data embedding stage."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from fastemb.spec.base import Section, input_path, output_path


def _increasing_layers(v: list[int] | None) -> list[int] | None:
    if v is not None and (any(i < 0 for i in v) or sorted(set(v)) != v):
        raise ValueError(f"expected increasing, distinct layer indices >= 0, got {v}")
    return v


class ModelSpec(Section):
    """The base model and how texts become vectors."""
    base: str = input_path("all-MiniLM-L6-v2", description="alias or local folder (sentence-transformers or HF)")
    pooling: Literal["mean", "cls"] | None = Field(None, description="default: the model's own")
    normalize: bool | None = Field(None, description="L2-normalise embeddings; default: the model's own")
    max_length: int = Field(64, gt=0, le=8192, description="tokens per text")
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


class DataSpec(Section):
    """Training pairs and the evaluation sets."""
    train: str = input_path("wordnet", description="'wordnet' (shipped) or a pairs file/folder (parquet or jsonl); "
                                                   "with format raw: 'wordnet' (the definitions) or a text "
                                                   "file/folder")
    format: Literal["pairs", "raw"] = Field("pairs", description="raw: unlabeled text, each text its own positive "
                                            "(SimCSE-style domain pre-training, fastemb/data/raw_text.py)")
    text_column: str = Field("text", min_length=1, description="format raw (and simcse tasks): the column "
                                                                "holding the texts")
    max_pairs: int | None = Field(None, gt=0, description="use at most this many pairs (raw: texts; seeded sample)")
    eval: str = input_path("wordnet", description="'wordnet' or a folder with {dev,test}_{queries,corpus}.parquet")
    test_queries: int | None = Field(None, gt=0, description="limit test queries (default: all)")
    dev_queries: int | None = Field(None, gt=0, description="limit dev queries used during training")
    dev_corpus: int | None = Field(None, gt=0, description="limit the dev corpus to the relevant texts plus others, "
                                                          "this many in all (cheaper dev evaluations)")


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
    batch_rows: int = Field(1024, gt=0, description="rows per map_batches call (sorted by length inside)")
    max_batch_tokens: int = Field(1024, gt=0, description="padded tokens per forward pass (length bucketing; ~1k keeps CPU activations in cache)")
    rows_per_unit: int = Field(200_000, gt=0, description="input rows per reusable unit of embedding shards")
    output: str | None = output_path(None, description="embedding shards folder (default: <run>/embeddings); reused")
    backend: Literal["torch", "onnx", "auto"] = Field(
        "auto", description="forward-pass engine: onnx = ONNX Runtime (exported once per model, cached; vectors equal "
        "torch's within 1e-5; ~2x torch per CPU thread); auto = onnx on CPU, torch on GPU")
