"""Static token-embedding models (Model2Vec, Tulkens & van Dongen 2024): a text's vector is the mean of fixed
per-token vectors, no transformer at inference.

``distil_static`` runs Model2Vec's ``distill_from_model`` on a fastemb / sentence-transformers model: one forward
pass per vocabulary token, PCA to ``dim`` dimensions, SIF weights folded into the rows. The folder it writes is
Model2Vec's own format (``model.safetensors`` with ``embeddings``, ``tokenizer.json``, ``config.json``) with the
``modules.json`` of sentence-transformers' ``StaticEmbedding`` + ``Normalize``, so ``SentenceTransformer(path)`` and
``model2vec.StaticModel.from_pretrained(path)`` both load it.

``StaticEncoder`` is fastemb's run of such a folder: tokenise without special tokens, drop ``[UNK]`` (as Model2Vec
does; sentence-transformers averages it in, so only texts with unknown tokens differ), mean of the rows (torch's
``embedding_bag``: 10-30x numpy's gather-and-reduce here, which materialises every token's row), L2 norm. It has
the ``Encoder`` attributes that evaluation and serving read (``tokenizer``, ``dim``, ``max_length``, ``normalize``,
``encode``) and is its own forward pass: ``(input_ids, attention_mask) -> vectors``.
"""
from __future__ import annotations

import json
import logging
import re
import time
from itertools import chain
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from fastemb.errors import FastembError

logger = logging.getLogger(__name__)
DEFAULT_DIM = 256  # Model2Vec's default PCA dimensions
DEFAULT_MAX_LENGTH = 512  # tokens per text of a folder whose config.json does not say (Model2Vec's default)
UNUSED_TOKENS = r"\[unused\d+\]"  # BERT's placeholder tokens: never distilled (Model2Vec's default pattern)
_POOLING = {"mean": "mean", "cls": "first"}  # fastemb pooling -> Model2Vec's PoolingMode
_ENCODE_CHUNK = 4096  # texts tokenised and pooled at a time


class StaticModelError(FastembError, ValueError):
    """A static model that cannot be made or loaded as asked; the message names the field and the fix."""


def is_static(folder: str | Path) -> bool:
    """True for a static token-embedding folder: sentence-transformers' ``StaticEmbedding`` first, or Model2Vec's
    ``config.json`` (``model_type: model2vec``) without a ``modules.json``."""
    folder = Path(folder)
    modules = folder / "modules.json"
    if modules.exists():
        first = json.loads(modules.read_text())[0]
        return first["type"].rsplit(".", 1)[-1] == "StaticEmbedding"
    config = folder / "config.json"
    return config.exists() and json.loads(config.read_text()).get("model_type") == "model2vec"


def keep_only_pattern(tokens: Iterable[str]) -> str:
    """A Model2Vec ``token_remove_pattern`` (``re.match`` on each vocabulary token) removing BERT's unused tokens and
    every token not in ``tokens``."""
    alternatives = "|".join(re.escape(t) for t in sorted(set(tokens)))
    return rf"{UNUSED_TOKENS}|(?!(?:{alternatives})$)"


def distil_static(model: str, out: str | Path, dim: int | None = DEFAULT_DIM, sif: float | None = 1e-4,
                  vocab_texts: Sequence[str] | None = None, field: str = "dim") -> Path:
    """Distil ``model`` (alias or folder) into a static model saved at ``out``.

    ``dim``: PCA dimensions (None: no PCA, the model's width); more than the model's width is refused, naming
    ``field``. ``sif``: Model2Vec's SIF coefficient (None: no weighting). ``vocab_texts``: keep only the tokens these
    texts tokenise to (a smaller model for a known domain; other texts then fall back to shorter pieces or
    ``[UNK]``, which is dropped)."""
    from model2vec.distill import distill_from_model
    from transformers import AutoTokenizer

    from fastemb.model.encoder import Encoder, _read_st_layout, model_width, resolve_model_path

    folder = Path(resolve_model_path(model))
    width = model_width(str(folder))
    if dim is not None and dim > width:
        raise StaticModelError(f"{field}: {dim} is more than the width of {model} ({width}): PCA keeps at most "
                               f"the model's own dimensions; give {field} ≤ {width}, or {field}: null to keep all "
                               f"{width}")
    encoder = Encoder.load(str(folder))  # the transformer wherever the folder keeps it, and its pooling
    tokenizer = AutoTokenizer.from_pretrained(folder / _read_st_layout(folder)[0], local_files_only=True)
    pattern = UNUSED_TOKENS
    if vocab_texts is not None:
        used = set(chain.from_iterable(tokenizer(list(vocab_texts), add_special_tokens=False)["input_ids"]))
        pattern = keep_only_pattern([*tokenizer.convert_ids_to_tokens(sorted(used)), *tokenizer.all_special_tokens])
    started = time.perf_counter()
    static = distill_from_model(model=encoder.transformer, tokenizer=tokenizer, pca_dims=dim, sif_coefficient=sif,
                                token_remove_pattern=pattern, pooling=_POOLING[encoder.pooling])
    static.normalize = encoder.normalize
    out = Path(out)
    static.save_pretrained(str(out))
    (out / "1_Normalize").mkdir(exist_ok=True)  # the Normalize module's folder sentence-transformers expects
    logger.info(f"distilled {model} into {out}: {static.embedding.shape[0]:,} tokens x {static.dim} dims in "
                f"{time.perf_counter() - started:.0f} s")
    return out


class StaticEncoder:
    """A static model: token ids -> mean of their rows (``[UNK]`` dropped) -> L2 norm; no transformer."""
    name = "static"  # as a forward pass (fastemb/model/forward.py's engines have a name too)
    pooling = "mean"

    def __init__(self, table: np.ndarray, tokenizer, normalize: bool = True, max_length: int = DEFAULT_MAX_LENGTH):
        from tokenizers import Tokenizer

        import torch

        self.table = np.ascontiguousarray(table, dtype=np.float32)
        self._rows = torch.from_numpy(self.table)  # shares the array's memory
        self.tokenizer = tokenizer  # transformers' fast tokenizer over the folder's tokenizer.json (serving reads it)
        self.normalize = bool(normalize)
        self.max_length = int(max_length)
        self._fast = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # encode_batch_fast, no offsets
        self._fast.no_padding()
        self._fast.enable_truncation(self.max_length)
        self.unk_id = tokenizer.unk_token_id

    @classmethod
    def load(cls, path: str | Path, max_length: int | None = None) -> "StaticEncoder":
        """Load a static folder (Model2Vec's or sentence-transformers' ``StaticEmbedding`` layout)."""
        from safetensors.numpy import load_file
        from transformers import PreTrainedTokenizerFast

        from fastemb.model.encoder import resolve_model_path

        folder = Path(resolve_model_path(str(path)))
        if not is_static(folder):
            raise StaticModelError(f"model {path}: not a static model folder (no StaticEmbedding in modules.json, no "
                                   "model2vec config.json); make one with `fastemb static`")
        modules = json.loads((folder / "modules.json").read_text()) if (folder / "modules.json").exists() else []
        sub = folder / (modules[0]["path"] if modules else "")
        weights = load_file(str(sub / "model.safetensors"))
        if "embedding.weight" in weights:  # saved by sentence-transformers' StaticEmbedding
            table = weights["embedding.weight"].astype(np.float32)
        else:  # Model2Vec: rows, optionally a token -> row mapping and per-token weights
            table = weights["embeddings"].astype(np.float32)
            if "mapping" in weights:
                table = table[weights["mapping"].astype(np.int64)]
            if "weights" in weights:
                table = table * weights["weights"].astype(np.float32)[:, None]
        config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
        normalize = any(m["type"].endswith("Normalize") for m in modules) if modules else config.get("normalize", True)
        tok = PreTrainedTokenizerFast(tokenizer_file=str(sub / "tokenizer.json"))
        fast = tok.backend_tokenizer
        unk = getattr(fast.model, "unk_token", None)
        padding = fast.padding or {}
        tok.add_special_tokens({k: v for k, v in (("unk_token", unk), ("pad_token", padding.get("pad_token")))
                                if v and v in tok.get_vocab()})
        return cls(table, tok, normalize, max_length or config.get("max_length") or DEFAULT_MAX_LENGTH)

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    def _pool(self, flat: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Vectors of texts given as their concatenated token ids ``flat`` and token counts ``lengths``."""
        if self.unk_id is not None:
            keep = flat != self.unk_id
            if not keep.all():
                rows = np.repeat(np.arange(len(lengths)), lengths)[keep]
                flat, lengths = flat[keep], np.bincount(rows, minlength=len(lengths))
        import torch

        offsets = torch.from_numpy(np.cumsum(lengths) - lengths)
        with torch.inference_mode():  # an empty bag sums to zeros
            out = torch.nn.functional.embedding_bag(torch.from_numpy(flat), self._rows, offsets, mode="sum").numpy()
        out /= np.maximum(lengths, 1)[:, None]
        if self.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """The forward pass serving runs: padded ``(input_ids, attention_mask)`` -> float32 (B, dim)."""
        mask = np.asarray(attention_mask).astype(bool)
        return self._pool(np.asarray(input_ids, dtype=np.int64)[mask], mask.sum(1))

    def vectors(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
        """Vectors of token-id lists (no special tokens), float32 (n, dim)."""
        lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
        flat = np.fromiter(chain.from_iterable(seqs), dtype=np.int64, count=int(lengths.sum()))
        return self._pool(flat, lengths)

    def encode(self, texts: Iterable[str], batch_size: int = _ENCODE_CHUNK, show_progress: bool = False,
               max_length: int | None = None) -> np.ndarray:
        """Embed texts as float32 (n, dim): tokenised (cut at ``max_length`` tokens) and pooled ``batch_size`` at a
        time."""
        texts = list(texts)
        if max_length and max_length != self.max_length:
            self._fast.enable_truncation(max_length)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        try:
            for start in range(0, len(texts), batch_size):
                enc = self._fast.encode_batch_fast(texts[start:start + batch_size], add_special_tokens=False)
                out[start:start + len(enc)] = self.vectors([e.ids for e in enc])
                if show_progress:
                    logger.info(f"encode {start + len(enc)}/{len(texts)} texts")
        finally:
            self._fast.enable_truncation(self.max_length)
        return out
