"""ANCE-style dynamic hard negatives, done simply (``negatives_pool`` in a train job).

Every ``negatives_pool.refresh_every`` optimizer steps the model being trained re-embeds a pool of candidate texts
and every training query's hard negatives are mined again from it; later micro-batches use the new ones.

* **Pool.** A task's distinct positives (a seeded sample of at most ``pool_size``). Every rank holds the task's
  full pairs (an unsplit Ray Dataset, ``pool_<task>``), so every rank builds the same pool and query list.
* **Refresh.** The work is split over the ranks: rank r embeds the pool texts ``r::W`` and the queries ``r::W``
  (with their positives, and old negatives, when not in the pool); the pool vectors are all-gathered; each rank
  searches its queries' top-K in an exact faiss index one chunk at a time and picks negatives with the mining rules
  (``fastemb.mine.select``: skip positives, TopK-PercPos margin, rank window); the picks are all-gathered, so every
  rank holds the same table. A query with fewer eligible candidates than k gets the rest at random from the pool
  (never its positives).
* **Start.** Pairs bring their own negatives until the first refresh; when some pair has fewer than k (or with
  ``mine_at_start``) the pool is mined once before the first step.
* **Resumption.** The table (pool rows per query) is saved in the DeepSpeed checkpoint's client state.
* **Log.** Each refresh returns seconds, negatives changed, and the mean score and rank of the new and the old
  negatives under the current model (rank 0 = the query's most similar pool text; an old negative outside the
  top-K, or not in the pool, counts as rank ``top_k``), queries short of candidates, skipped candidates by reason.
"""
from __future__ import annotations

import random
import time
from collections import Counter

import numpy as np
import torch
import torch.distributed as dist

from fastemb.data.pairs import DataError
from fastemb.data.text import text_hash, text_hashes
from fastemb.losses.gather import rank_and_world
from fastemb.mine.topk import exact_index, normalize_rows
from fastemb.mine.select import NegativeRules, select_for_queries
from fastemb.spec import NegativePoolSpec


def pool_dataset_name(task_key: str) -> str:
    """The unsplit Ray Dataset holding a task's pairs for its pool."""
    return f"pool_{task_key}"


def _all_gather(obj) -> list:
    """Every rank's ``obj``, in rank order (``[obj]`` outside a process group)."""
    _, world = rank_and_world()
    if world == 1:
        return [obj]
    out: list = [None] * world
    dist.all_gather_object(out, obj)
    return out


class NegativePool:
    """One task's candidate pool, its queries and each query's current hard negatives."""

    def __init__(self, task: str, pairs: list[dict], k: int, cfg: NegativePoolSpec):
        if k < 1:
            raise ValueError(f"negatives_pool (task {task!r}): needs loss.hard_negatives >= 1")
        self.task, self.k, self.cfg = task, k, cfg
        by_query: dict[str, list[dict]] = {}
        for p in sorted(pairs, key=lambda p: (p["query"], p["positive"])):
            by_query.setdefault(p["query"], []).append(p)
        self.queries = sorted(by_query)
        self.query_row = {q: i for i, q in enumerate(self.queries)}
        self.positives = [sorted({p["positive"] for p in by_query[q]}) for q in self.queries]
        self.own: list[list[str] | None] = [
            next((list(p["negatives"])[:k] for p in by_query[q] if len(p.get("negatives") or []) >= k), None)
            for q in self.queries]
        corpus = sorted({p["positive"] for p in pairs})
        if len(corpus) > cfg.pool_size:
            corpus = sorted(random.Random(cfg.seed).sample(corpus, cfg.pool_size))
        most_positives = max(len(p) for p in self.positives)
        if len(corpus) <= k + most_positives:
            raise DataError(f"negatives_pool.pool_size: task {task!r} has a pool of {len(corpus)} texts, too few for "
                            f"{k} negatives per query besides its positives")
        self.corpus = corpus
        self.corpus_row = {t: i for i, t in enumerate(corpus)}
        self.corpus_hashes = text_hashes(corpus)
        self.rows: np.ndarray | None = None   # (queries, k) pool rows once mined
        self.refreshed_at: int | None = None

    @property
    def needs_mining(self) -> bool:
        """Mine before the first step: some query has no negatives of its own, or the spec asks for it."""
        return self.rows is None and (self.cfg.mine_at_start or any(o is None for o in self.own))

    def negatives_for(self, query: str) -> list[str] | None:
        """The query's current negatives (its pair's own until the first refresh; None if it has none)."""
        i = self.query_row[query]
        return self.own[i] if self.rows is None else [self.corpus[j] for j in self.rows[i]]

    def apply(self, batch: list[dict]) -> list[dict]:
        """The micro-batch with each row's negatives taken from the pool."""
        return [{**r, "negatives": self.negatives_for(r["query"])} for r in batch]

    def state_dict(self) -> dict:
        """What a checkpoint keeps: the table and where it came from."""
        return {"rows": None if self.rows is None else torch.from_numpy(self.rows.copy()),
                "refreshed_at": self.refreshed_at, "shape": [len(self.queries), len(self.corpus), self.k]}

    def load_state_dict(self, state: dict) -> None:
        shape = [len(self.queries), len(self.corpus), self.k]
        if list(state["shape"]) != shape:
            raise DataError(f"negatives_pool (task {self.task!r}): the checkpoint's pool has (queries, pool, k) = "
                            f"{list(state['shape'])}, this run's data gives {shape}; resume with the same data")
        self.rows = None if state["rows"] is None else state["rows"].numpy().astype(np.int64)
        self.refreshed_at = state["refreshed_at"]

    def _random_fill(self, i: int, chosen: list[int], n: int, rng: random.Random) -> list[int]:
        """``n`` random pool rows that are neither positives of query ``i``, nor the query, nor chosen already."""
        banned = set(chosen) | {self.corpus_row[t] for t in self.positives[i] if t in self.corpus_row}
        if self.queries[i] in self.corpus_row:
            banned.add(self.corpus_row[self.queries[i]])
        out: list[int] = []
        while len(out) < n:
            j = rng.randrange(len(self.corpus))
            if j not in banned:
                banned.add(j)
                out.append(j)
        return out

    def refresh(self, encoder, step: int) -> dict:
        """Re-embed the pool with ``encoder`` (the current model) and mine every query's negatives again; every rank
        calls this at the same step. Returns the refresh statistics (the same on every rank)."""
        t0 = time.perf_counter()
        rank, world = rank_and_world()
        cfg, k = self.cfg, self.k
        mine = list(range(rank, len(self.queries), world))
        my_pool = list(range(rank, len(self.corpus), world))
        olds = [self.negatives_for(self.queries[i]) or [] for i in mine]
        extra = list(dict.fromkeys(t for a, i in enumerate(mine) for t in (*self.positives[i], *olds[a])
                                   if t not in self.corpus_row))
        texts = [self.queries[i] for i in mine] + [self.corpus[j] for j in my_pool] + extra
        vectors = normalize_rows(encoder.encode(texts, batch_size=cfg.batch_size))
        qv = vectors[:len(mine)]
        parts = _all_gather(vectors[len(mine):len(mine) + len(my_pool)])
        pool = np.empty((len(self.corpus), vectors.shape[1]), dtype=np.float32)
        for r, part in enumerate(parts):
            pool[r::world] = part
        extra_row = {t: len(mine) + len(my_pool) + n for n, t in enumerate(extra)}

        def vector(text: str) -> np.ndarray:
            return pool[self.corpus_row[text]] if text in self.corpus_row else vectors[extra_row[text]]

        positive_scores = [min(float(qv[a] @ vector(t)) for t in self.positives[i]) for a, i in enumerate(mine)]
        skipped: Counter = Counter()
        rng = random.Random(f"{cfg.seed}:{step}:{rank}")
        new_rows = np.empty((len(mine), k), dtype=np.int64)
        acc = Counter()
        for a, cand, _, picked in select_for_queries(
                exact_index(pool, cfg.top_k), qv, self.corpus_hashes, [set(text_hashes(self.positives[i]).tolist()) for i in mine],
                [text_hash(self.queries[i]) for i in mine], positive_scores, NegativeRules.from_spec(cfg, k),
                cfg.top_k, cfg.query_chunk, skipped, rng):
            chosen = [int(cand[r]) for r in picked]
            if len(chosen) < k:
                acc["short"] += 1
                chosen += self._random_fill(mine[a], chosen, k - len(chosen), rng)
            new_rows[a] = chosen
            rank_of = {int(row): r for r, row in enumerate(cand.tolist()) if row >= 0}
            new_texts = [self.corpus[j] for j in chosen]
            acc["changed"] += len(set(new_texts) - set(olds[a]))
            acc["new_score"] += float(sum(qv[a] @ pool[j] for j in chosen))
            acc["new_rank"] += sum(rank_of.get(j, cfg.top_k) for j in chosen)
            acc["new"] += k
            for t in olds[a]:
                row = rank_of.get(self.corpus_row.get(t, -1))
                acc["old_score"] += float(qv[a] @ vector(t))
                acc["old_rank"] += cfg.top_k if row is None else row
                acc["old_in_top_k"] += row is not None
                acc["old"] += 1
        table = np.empty((len(self.queries), k), dtype=np.int64)
        totals, skipped_all = Counter(), Counter()
        for rows_of, picks, part, skip in _all_gather((mine, new_rows, dict(acc), dict(skipped))):
            table[rows_of] = picks
            totals.update(part)
            skipped_all.update(skip)
        self.rows, self.refreshed_at = table, step
        old = max(totals["old"], 1)
        return {"step": step, "event": "negatives_refresh", "task": self.task,
                "seconds": round(time.perf_counter() - t0, 3), "queries": len(self.queries), "pool": len(self.corpus),
                "negatives": int(totals["new"]), "changed": int(totals["changed"]), "changed_fraction": totals["changed"] / max(totals["new"], 1),
                "new_score_mean": totals["new_score"] / max(totals["new"], 1),
                "old_score_mean": totals["old_score"] / old if totals["old"] else None,
                "new_rank_mean": totals["new_rank"] / max(totals["new"], 1),
                "old_rank_mean": totals["old_rank"] / old if totals["old"] else None,
                "old_in_top_k": totals["old_in_top_k"] / old if totals["old"] else None,
                "short": int(totals["short"]), "skipped": dict(sorted(skipped_all.items()))}


def describe_refresh(stats: dict) -> str:
    """The progress line of a refresh."""
    line = (f"step {stats['step']}: negatives refreshed (task {stats['task']}, pool {stats['pool']}) in "
            f"{stats['seconds']:.1f}s: {stats['changed']}/{stats['negatives']} changed "
            f"({stats['changed_fraction']:.0%}), mean score new {stats['new_score_mean']:.3f}")
    if stats["old_score_mean"] is not None:
        line += f" vs old {stats['old_score_mean']:.3f}"
    line += f", mean rank new {stats['new_rank_mean']:.1f}"
    if stats["old_rank_mean"] is not None:
        line += f" vs old {stats['old_rank_mean']:.1f}"
    return line + (f", {stats['short']} queries short of candidates" if stats["short"] else "")


def read_pool_rows(iterator) -> list[dict]:
    """All rows (query, positive, negatives) of a worker's unsplit pool dataset."""
    rows: list[dict] = []
    for block in iterator.iter_batches(batch_size=4096, batch_format="pyarrow"):
        rows.extend(block.to_pylist())
    return rows


def load_pools(spec, tasks: list, state: dict | None) -> dict[str, NegativePool]:
    """Inside a Ray Train worker: the negative pool of each task it refreshes (task key → pool), built from the
    task's unsplit pool dataset and restored from a checkpoint's ``state`` when given."""
    import ray.train

    from fastemb.train.tasks import uses_pool

    pools = {}
    for task in tasks:
        if not uses_pool(spec, task):
            continue
        rows = read_pool_rows(ray.train.get_dataset_shard(pool_dataset_name(task.key)))
        pool = NegativePool(task.name, rows, task.loss.hard_negatives, spec.negatives_pool)
        if state and task.key in state:
            pool.load_state_dict(state[task.key])
        pools[task.key] = pool
    return pools
