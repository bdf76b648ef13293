"""Token-based chunking of long documents (windows with overlap) and document-level score aggregation."""
from __future__ import annotations

from typing import Literal

import numpy as np

Aggregate = Literal["max", "mean"]


def token_windows(n_tokens: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) windows of at most ``window`` tokens covering ``n_tokens``, consecutive ones sharing ``overlap``."""
    if window <= 0 or not 0 <= overlap < window:
        raise ValueError(f"chunking: need 0 <= overlap < window, got overlap={overlap}, window={window}")
    if n_tokens <= window:
        return [(0, n_tokens)]
    step = window - overlap
    starts = list(range(0, n_tokens - overlap, step))
    return [(s, min(s + window, n_tokens)) for s in starts if s < n_tokens]


def chunk_token_ids(tokenizer, texts: list[str], max_length: int, overlap: int, max_chunks: int | None = None
                    ) -> list[tuple[int, int, list[int]]]:
    """(text index, chunk index, input ids with special tokens) for every chunk of every text."""
    start = [t for t in [tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id]
             if t is not None]
    end = [t for t in [tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id]
           if t is not None]
    body = max_length - len(start) - len(end)
    enc = tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]
    out = []
    for i, ids in enumerate(enc):
        windows = token_windows(len(ids), body, overlap)[: max_chunks or None]
        for c, (s, e) in enumerate(windows):
            out.append((i, c, start + ids[s:e] + end))
    return out


def aggregate_doc_scores(doc_ids: list[str], scores: np.ndarray, how: Aggregate = "max", k: int | None = None
                         ) -> list[tuple[str, float]]:
    """Chunk hits (doc id, score) of one query → documents ranked by the max or mean of their chunk scores."""
    acc: dict[str, list[float]] = {}
    for d, s in zip(doc_ids, scores):
        acc.setdefault(d, []).append(float(s))
    agg = {d: (max(v) if how == "max" else sum(v) / len(v)) for d, v in acc.items()}
    ranked = sorted(agg.items(), key=lambda kv: -kv[1])
    return ranked[:k] if k else ranked
