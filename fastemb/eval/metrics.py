"""Ranking metrics (binary relevance) and embedding-geometry metrics."""
from __future__ import annotations

import math

import numpy as np


def ranking_metrics(ranked: list[list[str]], relevant: list[set[str]]) -> dict[str, float]:
    """nDCG@10, MRR@10, recall@{1,10,100} and MAP@100, averaged over queries.

    ``ranked[i]`` is query i's result ids, best first (at least 100 when the corpus allows)."""
    acc = {"ndcg@10": 0.0, "mrr@10": 0.0, "recall@1": 0.0, "recall@10": 0.0, "recall@100": 0.0, "map@100": 0.0}
    for ids, rel in zip(ranked, relevant):
        hits = [1 if d in rel else 0 for d in ids[:100]]
        dcg = sum(h / math.log2(i + 2) for i, h in enumerate(hits[:10]))
        idcg = sum(1 / math.log2(i + 2) for i in range(min(len(rel), 10)))
        acc["ndcg@10"] += dcg / idcg
        first = next((i for i, h in enumerate(hits[:10]) if h), None)
        acc["mrr@10"] += 0.0 if first is None else 1.0 / (first + 1)
        for k in (1, 10, 100):
            acc[f"recall@{k}"] += sum(hits[:k]) / len(rel)
        found, ap = 0, 0.0
        for i, h in enumerate(hits):
            if h:
                found += 1
                ap += found / (i + 1)
        acc["map@100"] += ap / min(len(rel), 100)
    n = max(len(ranked), 1)
    return {k: v / n for k, v in acc.items()}


def alignment(x: np.ndarray, y: np.ndarray, alpha: float = 2.0) -> float:
    """E ||f(x) - f(y)||^alpha over positive pairs of normalised embeddings (lower is better).

    Wang & Isola, "Understanding Contrastive Representation Learning through Alignment and
    Uniformity on the Hypersphere" (ICML 2020)."""
    return float(np.mean(np.linalg.norm(_unit(x) - _unit(y), axis=1) ** alpha))


def uniformity(x: np.ndarray, t: float = 2.0, max_points: int = 2000, seed: int = 0) -> float:
    """log E exp(-t ||f(a) - f(b)||^2) over pairs of distinct points (lower is better; Wang & Isola 2020)."""
    x = _unit(x)
    if len(x) > max_points:
        x = x[np.random.default_rng(seed).choice(len(x), max_points, replace=False)]
    sq = np.clip(2.0 - 2.0 * (x @ x.T), 0.0, None)
    iu = np.triu_indices(len(x), k=1)
    return float(np.log(np.mean(np.exp(-t * sq[iu]))))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
