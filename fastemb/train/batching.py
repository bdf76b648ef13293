"""Micro-batches from a worker's data shard: length grouping and text hashes for the loss."""
from __future__ import annotations

import random
from typing import Iterator

import numpy as np

from fastemb.data.text import text_hashes


def length_grouped(rows: list[dict], batch_size: int, rng: random.Random, group_by_length: bool
                   ) -> list[list[dict]]:
    """Cut a window of rows into full micro-batches; with grouping, similar lengths share a batch
    (less padding) and the batch order is shuffled. A trailing partial batch is dropped, so every
    worker runs the same number of steps."""
    if group_by_length:
        rows = sorted(rows, key=lambda r: len(r["query"]) + len(r["positive"]))
    batches = [rows[i:i + batch_size] for i in range(0, len(rows) - batch_size + 1, batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


def iter_micro_batches(shard, batch_size: int, window: int, rng: random.Random, group_by_length: bool
                       ) -> Iterator[list[dict]]:
    """Stream micro-batches (lists of row dicts) from a Ray Data shard."""
    for block in shard.iter_batches(batch_size=batch_size * window, batch_format="pandas", drop_last=False):
        rows = block.to_dict("records")  # a list column (long documents' chunks) comes as a numpy array
        yield from length_grouped(rows, batch_size, rng, group_by_length)


def batch_hashes(batch: list[dict], hard_negatives: int) -> dict[str, np.ndarray]:
    """int64 hashes of queries, positives and negatives, for false-negative masking; with a ``weight`` column, the
    pairs' weights too (``weights``, float32), which the contrastive loss applies per query."""
    out = {"query_ids": text_hashes([r["query"] for r in batch]),
           "doc_ids": text_hashes([r["positive"] for r in batch])}
    if batch and "weight" in batch[0]:
        out["weights"] = np.asarray([r["weight"] for r in batch], dtype=np.float32)
    if hard_negatives:
        out["negative_ids"] = text_hashes([n for r in batch for n in r["negatives"][:hard_negatives]]
                                          ).reshape(len(batch), hard_negatives)
    return out
