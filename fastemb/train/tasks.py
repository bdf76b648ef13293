"""Multi-task training: a job's tasks, their data and losses, and which task each micro-batch comes from.

A job without ``tasks`` is one implicit task (``train``: ``data.train`` with the job's loss). With ``tasks``, each
micro-batch comes from ONE task, so in-batch and cross-worker negatives are of one dataset. The task of micro-step m
is ``task_schedule(...)[m]``: drawn with probability ∝ weight from a generator seeded by ``train.seed``, the same on
every rank (so the gathered negatives match) and a pure function of m (so a resumed run continues it). Each task
streams its own Ray Data shard; a task whose shard runs out starts its next epoch (reshuffled by length groups).
An epoch of a multi-task run is as many micro-steps as all tasks' pairs fill.

Kinds: ``pairs`` (query, positive[, negatives]; InfoNCE with the task's loss, and the job's distill terms when the
task has ``distill: true``), ``simcse`` (raw text, ``fastemb.data.raw_text``: each text is its own positive, the
two views differ by dropout; in-batch negatives) and ``long_docs`` (a query and its document's chunks,
``fastemb.data.long_docs``; the hierarchical loss, ``LongDocObjective``) and ``multi_view`` (a query and its item's
views, ``fastemb.data.multi_view``; the multi-view loss, ``MultiViewObjective``) and ``image_text`` (an image and its
captions, ``fastemb.data.images``; the symmetric image–text loss, ``ImageTextObjective``). A single-task job with
``data.format: raw`` is a simcse task, with ``data.format: long_docs`` a long_docs task, with ``data.format:
multi_view`` a multi_view task, with ``data.format: image_text`` an image_text task.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from fastemb.data.pairs import RowReport, load_pairs
from fastemb.spec import LossSpec, TrainJob, TrainSpec

if TYPE_CHECKING:
    import torch

Objective = Callable[[list[dict], dict], tuple["torch.Tensor", dict[str, float]]]


@dataclass(frozen=True)
class Task:
    """One resolved task: where its data is, its Ray Dataset name, its weight and effective loss."""
    name: str
    key: str
    kind: str
    data: str
    max_pairs: int | None
    weight: float
    loss: LossSpec
    distill: bool
    refresh_negatives: bool = True


def job_tasks(spec: TrainJob) -> list[Task]:
    """The job's tasks; a job without ``tasks`` is the single task ``train``."""
    if not spec.tasks:
        kind = {"raw": "simcse", "long_docs": "long_docs", "multi_view": "multi_view",
                "image_text": "image_text"}.get(spec.data.format, "pairs")
        return [Task("train", "train", kind, spec.data.train, spec.data.max_pairs, 1.0, spec.loss,
                     spec.distill is not None)]
    return [Task(t.name, f"train_{t.name}", t.kind, t.data, t.max_pairs, t.weight, t.effective_loss(spec.loss),
                 t.distill, t.refresh_negatives) for t in spec.tasks]


def check_matryoshka_width(spec: TrainJob) -> None:
    """Every loss's ``matryoshka_dims`` fit in the model's width (known only from the model: checked before
    training starts); a ``SpecError`` names the field otherwise."""
    from fastemb.model.encoder import model_width
    from fastemb.spec import SpecError

    losses = [("loss", spec.loss)] if not spec.tasks else [
        (f"tasks.{i}.loss" if "matryoshka_dims" in t.loss else "loss", t.effective_loss(spec.loss))
        for i, t in enumerate(spec.tasks)]
    wanted = [(field, lo.matryoshka_dims) for field, lo in losses if lo.matryoshka_dims]
    if not wanted:
        return
    width = model_width(spec.model.base)
    for field, dims in wanted:
        if dims[-1] > width:
            raise SpecError(f"invalid job spec:\n  {field}.matryoshka_dims: {dims[-1]} is larger than the model's "
                            f"width {width} ({spec.model.base}); use dimensions up to {width}")


def uses_pool(spec: TrainJob, task: Task) -> bool:
    """Whether the job's negative pool refreshes this task's hard negatives."""
    return spec.negatives_pool is not None and task.loss.hard_negatives > 0 and task.refresh_negatives


def load_task_pairs(spec: TrainJob, task: Task) -> tuple[list[dict], RowReport]:
    """A task's training rows and row report. With the negative pool, pairs short of negatives are kept (the pool
    mines theirs) and every row carries a ``negatives`` list."""
    seed = spec.train.seed
    if task.kind == "simcse":
        from fastemb.data.raw_text import load_raw_texts

        return load_raw_texts(task.data, spec.data.text_column, task.max_pairs, seed)
    if task.kind == "long_docs":
        from fastemb.data.long_docs import load_long_docs
        from fastemb.model.encoder import load_tokenizer

        return load_long_docs(task.data, load_tokenizer(spec.model.base), spec.model.max_length, spec.long_docs.overlap,
                              spec.long_docs.max_chunks, task.max_pairs, seed)
    if task.kind == "multi_view":
        from fastemb.data.multi_view import load_multi_view

        return load_multi_view(task.data, spec.multi_view.views, task.max_pairs, seed)
    if task.kind == "image_text":
        from fastemb.data.images import load_image_text

        it = spec.image_text
        return load_image_text(task.data, max_rows=task.max_pairs, seed=seed, max_bytes=it.max_image_bytes,
                               max_pixels=it.max_pixels)
    if spec.multilingual is not None:  # parallel text: (translation, english) pairs sampled per language
        from fastemb.data.parallel import load_parallel_pairs

        m = spec.multilingual
        return load_parallel_pairs(task.data, m.languages, task.max_pairs, m.temperature, m.weights, seed)
    pool = uses_pool(spec, task)
    pairs, report = load_pairs(task.data, task.max_pairs, task.loss.hard_negatives, seed, require_negatives=not pool)
    if pool:
        pairs = [{**p, "negatives": p.get("negatives", [])} for p in pairs]
    return pairs, report


def long_docs_eval(spec: TrainJob) -> dict | None:
    """How the job's evaluations score long documents (``fastemb.eval.long_docs``): chunks of the training length,
    the ``long_docs`` section's document score and late chunking; None for a job without long documents."""
    return spec.long_docs.eval_options(spec.model.max_length, spec.loss.temperature) if spec.long_docs else None


def multi_view_eval(spec: TrainJob) -> dict | None:
    """How the job's evaluations score multi-view items (``fastemb.eval.multi_view``): the views, their weights, the
    item score and the fusion; None for a job without multi-view items."""
    return spec.multi_view.eval_options(spec.data.eval) if spec.multi_view else None


def task_schedule(weights: list[float], n_micro: int, seed: int) -> np.ndarray:
    """The task index of each of ``n_micro`` micro-steps, drawn ∝ ``weights`` (seeded: identical on every rank)."""
    w = np.asarray(weights, dtype=np.float64)
    if len(w) == 1:
        return np.zeros(n_micro, dtype=np.int64)
    return np.random.default_rng([seed, 7177]).choice(len(w), size=n_micro, p=w / w.sum())


def task_stream(shard, t: TrainSpec, per_epoch: int, done: int, task_index: int, by_length: bool = True
                ) -> Iterator[list[dict]]:
    """Endless micro-batches of one task's shard, skipping the ``done`` already trained on (resumption).

    Epoch e of task i is shuffled by ``Random(seed·1000 + e + 100003·i)`` (the single-task order is unchanged).
    ``by_length``: False for rows without texts to group by length (images)."""
    from fastemb.train.batching import iter_micro_batches

    epoch, skip = divmod(done, per_epoch)
    while True:
        rng = random.Random(t.seed * 1000 + epoch + 100_003 * task_index)
        for i, batch in enumerate(iter_micro_batches(shard, t.micro_batch_size, t.length_window, rng,
                                                     t.group_by_length and by_length)):
            if i >= per_epoch:
                break
            if i >= skip:
                yield batch
        epoch, skip = epoch + 1, 0


def micro_batches_done(schedule: np.ndarray, micro: int, n_tasks: int) -> list[int]:
    """How many micro-batches of each task the first ``micro`` micro-steps took."""
    return np.bincount(schedule[:micro], minlength=n_tasks).tolist()


class Contrastive:
    """InfoNCE (wrapped by the Matryoshka loss with ``loss.matryoshka_dims``) over a micro-batch's queries, positives
    and ``k`` hard negatives per query. Called, it embeds the columns and returns ``(loss, {})``; the cached loss
    (``fastemb.train.grad_cache``) uses its parts: ``columns``, ``student.embed`` and ``loss_terms``."""

    def __init__(self, student, loss: LossSpec, block_rows: int | None = None):
        self.student, self.k, self.loss = student, loss.hard_negatives, contrastive_loss(loss, block_rows)

    def columns(self, batch: list[dict]) -> list[list[str]]:
        """The texts to embed: queries, positives and (with k > 0) the k negatives of each row, flattened."""
        out = [[r["query"] for r in batch], [r["positive"] for r in batch]]
        if self.k:
            out.append([x for r in batch for x in r["negatives"][:self.k]])
        return out

    def _inputs(self, embeddings: list) -> tuple:
        q, p, *negatives = embeddings
        return q, p, negatives[0].view(len(q), self.k, -1) if negatives else None

    def loss_of(self, embeddings: list, ids: dict):
        """The loss of the columns' embeddings (in ``columns`` order)."""
        return self.loss(*self._inputs(embeddings), **ids)

    def loss_terms(self, embeddings: list, ids: dict) -> Iterator:
        """The loss as terms that sum to it, each computed when taken (the Matryoshka loss: one per dimension)."""
        terms = getattr(self.loss, "terms", None)
        return terms(*self._inputs(embeddings), **ids) if terms else iter([self.loss_of(embeddings, ids)])

    def __call__(self, batch: list[dict], ids: dict):
        return self.loss_of([self.student.embed(texts) for texts in self.columns(batch)], ids), {}


def contrastive_loss(lo: LossSpec, block_rows: int | None = None):
    """The loss module a ``loss`` section describes: InfoNCE, wrapped by the Matryoshka loss when it has
    ``matryoshka_dims``; ``block_rows``: score that many query rows at a time (the cached loss's big batches)."""
    from fastemb.losses import InfoNCELoss, MatryoshkaLoss

    infonce = InfoNCELoss(lo.temperature, lo.similarity, lo.gather_across_workers, lo.mask_false_negatives,
                          block_rows)
    return MatryoshkaLoss(infonce, lo.matryoshka_dims, lo.matryoshka_weights) if lo.matryoshka_dims else infonce


class LongDocObjective:
    """The hierarchical InfoNCE loss (fastemb/losses/hierarchical.py) over a micro-batch of (query, document chunks)
    rows: queries and every chunk embedded, the chunks padded to ``long_docs.max_chunks`` per document (the same
    shape on every worker, for the all-gather). Returns ``(loss, {"chunk": ..., "doc": ...})``."""

    def __init__(self, student, loss: LossSpec, long_docs):
        from fastemb.losses import HierarchicalInfoNCELoss

        self.student, self.max_chunks = student, long_docs.max_chunks
        self.loss = HierarchicalInfoNCELoss(loss.temperature, long_docs.chunk_weight, long_docs.doc_weight,
                                            long_docs.positive, loss.similarity, loss.gather_across_workers,
                                            loss.mask_false_negatives)

    def __call__(self, batch: list[dict], ids: dict):
        import torch

        chunks = [list(r["chunks"])[:self.max_chunks] for r in batch]
        query = self.student.embed([r["query"] for r in batch])
        flat = self.student.embed([c for doc in chunks for c in doc])
        slots = torch.tensor([i * self.max_chunks + c for i, doc in enumerate(chunks) for c in range(len(doc))],
                             device=flat.device)
        padded = flat.new_zeros(len(batch) * self.max_chunks, flat.shape[1]).index_copy(0, slots, flat)
        mask = torch.zeros(len(batch) * self.max_chunks, dtype=torch.bool, device=flat.device)
        mask[slots] = True
        return self.loss(query, padded.view(len(batch), self.max_chunks, -1), mask.view(len(batch), -1),
                         ids.get("query_ids"), ids.get("doc_ids"))


class MultiViewObjective:
    """The multi-view InfoNCE loss (fastemb/losses/multi_view.py) over a micro-batch of (query, item views) rows: the
    queries and every present view embedded, the views placed in a (batch, views, d) tensor with zeros where missing
    (the same shape on every worker, for the all-gather). Returns ``(loss, {"query": ..., "view": ...,
    "query_<view name>": ...})``: the per-view query ↔ view terms are the report's per-view figures."""

    def __init__(self, student, loss: LossSpec, multi_view):
        from fastemb.losses import MultiViewInfoNCELoss

        self.student, self.views = student, list(multi_view.views)
        self.loss = MultiViewInfoNCELoss(multi_view.view_weights, loss.temperature, multi_view.query_weight,
                                         multi_view.view_weight, loss.similarity, loss.gather_across_workers,
                                         loss.mask_false_negatives)

    def __call__(self, batch: list[dict], ids: dict):
        import torch

        n_views = len(self.views)
        cells = [(i, a, text) for i, r in enumerate(batch) for a, text in enumerate(list(r["views"])[:n_views])
                 if text]
        query = self.student.embed([r["query"] for r in batch])
        flat = self.student.embed([text for _, _, text in cells])
        slots = torch.tensor([i * n_views + a for i, a, _ in cells], device=flat.device)
        views = flat.new_zeros(len(batch) * n_views, flat.shape[1]).index_copy(0, slots, flat)
        mask = torch.zeros(len(batch) * n_views, dtype=torch.bool, device=flat.device)
        mask[slots] = True
        loss, terms = self.loss(query, views.view(len(batch), n_views, -1), mask.view(len(batch), -1),
                                ids.get("query_ids"), ids.get("doc_ids"))
        return loss, {(f"query_{self.views[int(k[6:])]}" if k[6:].isdigit() else k): v for k, v in terms.items()}


class ImageTextObjective:
    """The symmetric image–text InfoNCE loss (fastemb/losses/clip.py) over a micro-batch of (pixels, sampled caption,
    concept) rows (fastemb/data/image_stream.py): images of one concept are not each other's captions' negatives,
    nor are equal captions. Returns ``(loss, {"text_to_image": ..., "image_to_text": ...})``."""

    def __init__(self, model, loss: LossSpec):
        from fastemb.losses import SymmetricInfoNCELoss

        self.model = model
        self.loss = SymmetricInfoNCELoss(loss.temperature, loss.similarity, loss.gather_across_workers,
                                         loss.mask_false_negatives)

    def __call__(self, batch: list[dict], ids: dict):
        import torch

        from fastemb.data.text import text_hashes

        captions = [r["caption"] for r in batch]
        pixels = torch.from_numpy(np.stack([np.asarray(r["pixels"], dtype=np.float32) for r in batch]))
        image_ids = torch.from_numpy(text_hashes([r["concept"] for r in batch]))
        loss, terms = self.loss(self.model.embed_pixels(pixels), self.model.embed(captions), image_ids,
                                torch.from_numpy(text_hashes(captions)))
        return loss, {name: float(value) for name, value in terms.items()}


def task_objective(spec: TrainJob, task: Task, module, teacher) -> Objective:
    """``(batch, text-hash ids) → (loss, unweighted terms)`` for one task: InfoNCE with the task's loss (a
    ``Contrastive``), or the distillation objective (``fastemb.train.distill``) for a task with ``distill: true``."""
    lo = task.loss
    if task.kind == "long_docs":
        return LongDocObjective(getattr(module, "student", module), lo, spec.long_docs)
    if task.kind == "multi_view":
        return MultiViewObjective(getattr(module, "student", module), lo, spec.multi_view)
    if task.kind == "image_text":
        return ImageTextObjective(module, lo)
    if task.distill:
        from fastemb.train.distill import DistillObjective

        return DistillObjective(spec.model_copy(update={"loss": lo}), module, contrastive_loss(lo), teacher)
    block_rows = spec.train.cache_mini_batch if spec.train.cached else None  # as the cached loss embeds
    return Contrastive(getattr(module, "student", module), lo, block_rows)
