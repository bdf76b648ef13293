"""Token-based chunking of long documents (windows with overlap) and document scores from chunk scores.

Used by the index job (chunked entries, results grouped by document), by long-document training (a document's
chunks, fastemb/data/long_docs.py) and by long-document evaluation (fastemb/eval/long_docs.py).

Document score from the scores ``s_1..s_m`` of its chunks: ``max`` (the best passage, MaxP: Dai & Callan, "Deeper
Text Understanding for IR with Contextual Neural Language Modeling", SIGIR 2019), ``mean``, or ``attention``:
``Σ_j softmax(s / t)_j · s_j``, a soft maximum that the temperature ``t`` moves from the mean (t → ∞) to the max
(t → 0); the query's attention over its document's chunks, as the hierarchical loss's positive
(fastemb/losses/hierarchical.py).
"""
from __future__ import annotations

from typing import Literal

import numpy as np

Aggregate = Literal["max", "mean", "attention"]
ATTENTION_TEMPERATURE = 0.05  # default t of the attention aggregate: the loss's temperature (cosine scores)


def token_windows(n_tokens: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) windows of at most ``window`` tokens covering ``n_tokens``, consecutive ones sharing ``overlap``."""
    if window <= 0 or not 0 <= overlap < window:
        raise ValueError(f"chunking: need 0 <= overlap < window, got overlap={overlap}, window={window}")
    if n_tokens <= window:
        return [(0, n_tokens)]
    step = window - overlap
    starts = list(range(0, n_tokens - overlap, step))
    return [(s, min(s + window, n_tokens)) for s in starts if s < n_tokens]


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a text (``[CLS]`` and ``[SEP]`` for BERT; BOS / EOS otherwise)."""
    start = [t for t in [tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id]
             if t is not None]
    end = [t for t in [tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id]
           if t is not None]
    return start, end


def chunk_token_ids(tokenizer, texts: list[str], max_length: int, overlap: int, max_chunks: int | None = None
                    ) -> list[tuple[int, int, list[int]]]:
    """(text index, chunk index, input ids with special tokens) for every chunk of every text."""
    start, end = special_tokens(tokenizer)
    body = max_length - len(start) - len(end)
    enc = tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]
    out = []
    for i, ids in enumerate(enc):
        windows = token_windows(len(ids), body, overlap)[: max_chunks or None]
        for c, (s, e) in enumerate(windows):
            out.append((i, c, start + ids[s:e] + end))
    return out


def chunk_texts(tokenizer, texts: list[str], max_length: int, overlap: int, max_chunks: int | None = None
                ) -> tuple[list[list[str]], list[int]]:
    """Each text cut into the spans of its token windows (``max_length`` tokens with the special tokens, as
    :func:`chunk_token_ids`), as substrings of the text (a fast tokenizer's offsets), at most ``max_chunks`` per text.

    Returns the chunks of each text (``[]`` for a text with no token) and each text's number of windows before the
    ``max_chunks`` cut (more than ``len(chunks)``: the document was longer than the limit)."""
    start, end = special_tokens(tokenizer)
    body = max_length - len(start) - len(end)
    enc = tokenizer(texts, add_special_tokens=False, truncation=False, return_offsets_mapping=True, verbose=False)
    chunks, windows_of = [], []
    for text, offsets in zip(texts, enc["offset_mapping"]):
        windows = token_windows(len(offsets), body, overlap) if offsets else []
        windows_of.append(len(windows))
        chunks.append([text[offsets[s][0]:offsets[e - 1][1]] for s, e in windows[: max_chunks or None]])
    return chunks, windows_of


def pool_documents(seqs: list[tuple[int, int, list[int]]], vectors: np.ndarray, normalize: bool = True
                   ) -> tuple[list[tuple[int, int, list[int]]], np.ndarray]:
    """One entry per document from its chunks' entries (``chunk_token_ids`` order): the mean of its chunk vectors
    (re-normalised with ``normalize``), keeping its first chunk's (text index, 0, ids)."""
    firsts: dict[int, int] = {}
    for n, (i, _, _) in enumerate(seqs):
        firsts.setdefault(i, n)
    doc_of = np.searchsorted(np.asarray(list(firsts)), [i for i, _, _ in seqs])  # text indices increase
    pooled = np.zeros((len(firsts), vectors.shape[1]), dtype=np.float32)
    np.add.at(pooled, doc_of, vectors)
    pooled /= np.bincount(doc_of, minlength=len(firsts))[:, None]
    if normalize:
        pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
    return [(i, 0, seqs[n][2]) for i, n in firsts.items()], pooled


def attention_pool(scores: np.ndarray, temperature: float = ATTENTION_TEMPERATURE) -> float:
    """``Σ_j softmax(scores / t)_j · scores_j`` (see the module docstring)."""
    s = np.asarray(scores, dtype=np.float64)
    w = np.exp((s - s.max()) / temperature)
    return float((w * s).sum() / w.sum())


def pool_scores(scores, how: Aggregate = "max", temperature: float = ATTENTION_TEMPERATURE) -> float:
    """One document's score from its chunks' scores."""
    s = np.asarray(scores, dtype=np.float64)
    if how == "max":
        return float(s.max())
    if how == "mean":
        return float(s.mean())
    if how == "attention":
        return attention_pool(s, temperature)
    raise ValueError(f"document score: expected max, mean or attention, got {how!r}")


def aggregate_doc_scores(doc_ids: list[str], scores: np.ndarray, how: Aggregate = "max", k: int | None = None,
                         temperature: float = ATTENTION_TEMPERATURE) -> list[tuple[str, float]]:
    """Chunk hits (doc id, score) of one query → documents ranked by the max, mean or attention pool of their chunk
    scores."""
    acc: dict[str, list[float]] = {}
    for d, s in zip(doc_ids, scores):
        acc.setdefault(d, []).append(float(s))
    agg = {d: pool_scores(v, how, temperature) for d, v in acc.items()}
    ranked = sorted(agg.items(), key=lambda kv: -kv[1])
    return ranked[:k] if k else ranked
