"""Reading embedding shards: vectors of the kept rows, training samples, the duplicate-id plan, the id map.

Duplicate ids: among the embedded rows sharing an id, the one kept is the one whose text hash is smallest
(identical texts: the first in shard order). The rule does not depend on the order in which shards finish, so
reruns and retries keep the same row. The driver only ever reads id/hash columns, never vectors.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq



def vectors_of(table: pa.Table) -> np.ndarray:
    """The ``vector`` column of rows that all have a vector, as float32 (n, d)."""
    col = table.column("vector").combine_chunks()
    dim = col.type.list_size
    return np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)


def plan_duplicates(files: list[str], duplicate_ids: set[str]) -> tuple[dict[str, list[int]], int]:
    """Per shard file, the row numbers to drop as duplicates; and how many documents that is.

    An occurrence of a document is its chunk-0 row plus the chunk rows right after it."""
    if not duplicate_ids:
        return {}, 0
    value_set = pa.array(sorted(duplicate_ids), pa.string())
    occurrences: dict[str, list[tuple[int, str, list[int]]]] = {}  # id -> [(thash of chunk 0, file, rows)]
    for f in files:
        t = pq.read_table(f, columns=["id", "chunk", "thash", "skip"])
        mask = pc.and_(pc.is_in(t["id"], value_set=value_set), pc.is_null(t["skip"]))
        pos = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
        for p, r in zip(pos, t.take(pa.array(pos)).to_pylist() if len(pos) else []):
            occ = occurrences.setdefault(r["id"], [])
            if r["chunk"] == 0 or not occ:
                occ.append((r["thash"], f, [int(p)]))
            else:
                occ[-1][2].append(int(p))
    drop: dict[str, list[int]] = {}
    dropped = 0
    for occ in occurrences.values():
        dropped += len(occ) - 1
        winner = min(range(len(occ)), key=lambda i: occ[i][0])  # first minimum: stable for identical texts
        for i, (_, f, rows) in enumerate(occ):
            if i != winner:
                drop.setdefault(f, []).extend(rows)
    return drop, dropped


def kept_mask(table: pa.Table, drop_rows: list[int] | None) -> np.ndarray:
    """Rows of one shard that go into the index: embedded, and not a dropped duplicate."""
    mask = pc.is_null(table["skip"]).to_numpy(zero_copy_only=False).copy()
    if drop_rows:
        mask[np.asarray(drop_rows, dtype=np.int64)] = False
    return mask


def read_kept(file: str, drop_rows: list[int] | None, columns: list[str]) -> pa.Table:
    t = pq.read_table(file, columns=list(dict.fromkeys(columns + ["skip"])))
    return t.filter(pa.array(kept_mask(t, drop_rows)))


def kept_counts(files: list[str], drop: dict[str, list[int]]) -> list[int]:
    """Number of index entries each shard contributes."""
    return [int(kept_mask(pq.read_table(f, columns=["skip"]), drop.get(f)).sum()) for f in files]


def sample_vectors(files: list[str], counts: list[int], drop: dict[str, list[int]], n: int, seed: int = 0
                   ) -> np.ndarray:
    """A uniform sample of ``n`` kept vectors (fewer if there are fewer), read one shard at a time."""
    total = sum(counts)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(total, size=min(n, total), replace=False))
    out, offset = [], 0
    for f, c in zip(files, counts):
        local = pick[(pick >= offset) & (pick < offset + c)] - offset
        if len(local):
            out.append(vectors_of(read_kept(f, drop.get(f), ["vector"]).take(pa.array(local))))
        offset += c
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def write_id_map(files: list[str], drop: dict[str, list[int]], path: str) -> tuple[int, Counter]:
    """``ids.parquet``: row i is faiss id i (id, chunk, text); streamed shard by shard.

    Returns (rows written, rows skipped by reason; duplicates are added by the caller)."""
    skipped: Counter = Counter()
    writer, n = None, 0
    schema = pa.schema([("id", pa.string()), ("chunk", pa.int32()), ("text", pa.string())])
    try:
        for f in files:
            t = pq.read_table(f, columns=["id", "chunk", "text", "skip"])
            skipped.update(t["skip"].drop_null().to_pylist())
            kept = t.filter(pa.array(kept_mask(t, drop.get(f)))).select(["id", "chunk", "text"]).cast(schema)
            writer = writer or pq.ParquetWriter(path, schema)
            writer.write_table(kept)
            n += kept.num_rows
    finally:
        if writer:
            writer.close()
    return n, skipped
