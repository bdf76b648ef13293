"""Query → document retrieval over long documents: every document cut into token windows, each window a vector,
a document's score pooled from its chunks' scores (max, mean or attention: fastemb/data/chunking.py).

Two ways to embed the chunks:

- **naive**: each chunk is its own text of ``chunk_length`` tokens (special tokens included), as the index job does;
- **late chunking** (Günther et al., "Late Chunking: Contextual Chunk Embeddings Using Long-Context Embedding
  Models", 2024): the document is run through the transformer in windows as long as the model's position limit
  (512 tokens for MiniLM), once, and each chunk's vector is the mean of its tokens' output states, so every chunk sees
  the context around it. The chunk spans are the naive ones; a document longer than one window is cut at chunk
  boundaries into several windows (no chunk straddles two).

Documents longer than any limit are cut at ``max_chunks`` chunks when given (counted as ``documents_truncated``);
a document with no token at all scores below every other (counted as ``documents_empty``). Nothing crashes.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from fastemb.data.chunking import ATTENTION_TEMPERATURE, special_tokens, token_windows
from fastemb.data.eval_sets import EvalSet
from fastemb.eval.metrics import ranking_metrics
from fastemb.model.batching import CPU_BATCH_TOKENS, bucket_batches, embed_sequences, pad_batch
from fastemb.model.onnx_backend import TorchForward

DOC_SCORES = ("max", "mean", "attention")


def document_chunks(tokenizer, texts: list[str], chunk_length: int, overlap: int, max_chunks: int | None
                    ) -> tuple[list[list[int]], list[list[tuple[int, int]]], dict]:
    """Each text's token ids (no special tokens) and its chunk spans [start, end); counts of cut and empty texts."""
    start, end = special_tokens(tokenizer)
    body = chunk_length - len(start) - len(end)
    ids = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    spans, counts = [], {"documents_truncated": 0, "documents_empty": 0}
    for seq in ids:
        windows = token_windows(len(seq), body, overlap) if seq else []
        counts["documents_empty"] += not seq
        if max_chunks and len(windows) > max_chunks:
            counts["documents_truncated"] += 1
            windows = windows[:max_chunks]
        spans.append(windows)
    return ids, spans, counts


def naive_chunk_vectors(encoder, ids: list[list[int]], spans: list[list[tuple[int, int]]]) -> np.ndarray:
    """One vector per chunk, each chunk embedded on its own (with its special tokens)."""
    start, end = special_tokens(encoder.tokenizer)
    seqs = [start + seq[s:e] + end for seq, doc in zip(ids, spans) for s, e in doc]
    pad = encoder.tokenizer.pad_token_id or 0
    return embed_sequences(TorchForward(encoder), seqs, pad, encoder.dim, max_tokens=CPU_BATCH_TOKENS) if seqs else \
        np.zeros((0, encoder.dim), dtype=np.float32)


def late_windows(spans: list[tuple[int, int]], limit: int) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """A document's chunk spans packed, in order, into windows of at most ``limit`` tokens: (start, end, its
    chunks). A window ends before the chunk that would make it longer than ``limit``."""
    out: list[tuple[int, int, list[tuple[int, int]]]] = []
    for s, e in spans:
        if out and e - out[-1][0] <= limit:
            out[-1] = (out[-1][0], e, out[-1][2] + [(s, e)])
        else:
            out.append((s, e, [(s, e)]))
    return out


def late_chunk_vectors(encoder, ids: list[list[int]], spans: list[list[tuple[int, int]]],
                       window: int | None = None) -> np.ndarray:
    """One vector per chunk by late chunking: each window of a document embedded once (with its special tokens),
    each chunk the mean of its tokens' output states (L2-normalised when the encoder normalises)."""
    start, end = special_tokens(encoder.tokenizer)
    limit = (window or encoder.transformer.config.max_position_embeddings) - len(start) - len(end)
    jobs = []  # (input ids, chunk spans relative to the window's first body token, first output row)
    row = 0
    for seq, doc in zip(ids, spans):
        for ws, we, chunks in late_windows(doc, limit):
            jobs.append((start + seq[ws:we] + end, [(s - ws, e - ws) for s, e in chunks], row))
            row += len(chunks)
    out = np.zeros((row, encoder.dim), dtype=np.float32)
    pad = encoder.tokenizer.pad_token_id or 0
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    with torch.inference_mode():
        for idx in bucket_batches([len(j[0]) for j in jobs], CPU_BATCH_TOKENS):
            input_ids, mask = pad_batch([jobs[i][0] for i in idx], pad)
            hidden = encoder.transformer(input_ids=torch.as_tensor(input_ids, device=device),
                                         attention_mask=torch.as_tensor(mask, device=device)).last_hidden_state
            for b, i in enumerate(idx):
                _, chunks, first = jobs[i]
                for c, (s, e) in enumerate(chunks):
                    out[first + c] = hidden[b, len(start) + s:len(start) + e].float().mean(0).cpu().numpy()
    encoder.train(was_training)
    if encoder.normalize:
        out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
    return out


def document_scores(chunk_scores: np.ndarray, doc_of_chunk: np.ndarray, n_docs: int, how: str = "max",
                    temperature: float = ATTENTION_TEMPERATURE) -> np.ndarray:
    """(queries, chunks) scores → (queries, documents) by max, mean or attention over each document's chunks
    (chunks in document order); a document without chunks scores -inf."""
    out = np.full((chunk_scores.shape[0], n_docs), -np.inf, dtype=np.float64)
    if chunk_scores.shape[1] == 0:
        return out
    docs, starts = np.unique(doc_of_chunk, return_index=True)
    s = chunk_scores.astype(np.float64)
    if how == "max":
        pooled = np.maximum.reduceat(s, starts, axis=1)
    elif how == "mean":
        pooled = np.add.reduceat(s, starts, axis=1) / np.diff(np.append(starts, s.shape[1]))
    elif how == "attention":
        top = np.maximum.reduceat(s, starts, axis=1)
        w = np.exp((s - np.repeat(top, np.diff(np.append(starts, s.shape[1])), axis=1)) / temperature)
        pooled = np.add.reduceat(w * s, starts, axis=1) / np.add.reduceat(w, starts, axis=1)
    else:
        raise ValueError(f"document score: expected max, mean or attention, got {how!r}")
    out[:, docs] = pooled
    return out


def evaluate_long_docs(encoder, data: EvalSet, chunk_length: int, overlap: int = 16, max_chunks: int | None = None,
                       doc_score: str = "max", late_chunking: bool = False,
                       temperature: float = ATTENTION_TEMPERATURE) -> dict:
    """nDCG@10, MRR@10, recall@k and MAP@100 of query → document retrieval on ``data`` (its corpus: long documents)
    with ``doc_score``; ``ndcg@10_<how>``: nDCG@10 with each document score (the same chunk vectors); the counts of
    chunks and of documents cut or empty."""
    t0 = time.perf_counter()
    ids, spans, counts = document_chunks(encoder.tokenizer, data.corpus, chunk_length, overlap, max_chunks)
    embed = late_chunk_vectors if late_chunking else naive_chunk_vectors
    chunks = embed(encoder, ids, spans)
    encode_s = time.perf_counter() - t0
    doc_of_chunk = np.repeat(np.arange(len(spans)), [len(s) for s in spans])
    queries = encoder.encode(data.queries, batch_size=128)
    if not encoder.normalize:
        queries = queries / np.clip(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12, None)
        chunks = chunks / np.clip(np.linalg.norm(chunks, axis=1, keepdims=True), 1e-12, None)
    by_how = {}
    for how in DOC_SCORES:
        scores = document_scores(queries @ chunks.T, doc_of_chunk, len(spans), how, temperature)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :100]
        by_how[how] = ranking_metrics([[data.corpus_ids[j] for j in row] for row in top], data.relevant)
    return {**by_how[doc_score], **{f"ndcg@10_{how}": m["ndcg@10"] for how, m in by_how.items()},
            "queries": len(data.queries), "corpus": len(data.corpus), "chunks": int(len(chunks)), **counts,
            "encode_docs_per_s": len(data.corpus) / encode_s}
