"""One arm's model inside a Serve replica: tokenise, batch across requests (``@serve.batch`` bounded by items and
by a padded-token budget, items sorted by length), forward, search; swaps model versions without dropping requests.

Used in-process by the fused single-arm deployment (no extra hop) and by the ``ArmModel`` deployments of A/B mode.
"""
from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

import numpy as np
from ray import serve

from fastemb.model.batching import pad_batch
from fastemb.spec import ArmSpec
from fastemb.serve.versions import LoadedModel, RegistryWatcher, load, resolve

LATENCY_MS_BOUNDS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000]
_BATCH_BOUNDS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
_TOKEN_BOUNDS = [16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]
_OVER = 1 << 60


def _batch_cost(items: list) -> int:
    """Padded tokens of a batch (longest x inputs); over budget once it holds more inputs than allowed.

    Each item is one request's piece ``(token_ids_list, max_items, model)``; ``max_batch_size`` of the
    ``@serve.batch`` is the token budget.
    """
    n = sum(len(it[0]) for it in items)
    if n > items[0][1]:
        return _OVER
    return max(len(x) for it in items for x in it[0]) * n


def _image_count(items: list) -> int:
    """Pictures in a batch of image pieces ``(pictures, model)``."""
    return sum(len(it[0]) for it in items)


def pieces(lengths: list[int], max_items: int, budget: int) -> list[list[int]]:
    """Consecutive index ranges of one request, each within ``max_items`` inputs and ``budget`` padded tokens."""
    out, cur, longest = [], [], 0
    for i, n in enumerate(lengths):
        if cur and (len(cur) + 1 > max_items or max(longest, n) * (len(cur) + 1) > budget):
            out.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, n)
    if cur:
        out.append(cur)
    return out


def chunks_by_length(lengths: list[int], max_items: int) -> list[list[int]]:
    """Indices sorted by length (longest first), cut where padding would more than double, or at max_items."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    chunks, cur = [], []
    for i in order:
        if cur and (len(cur) >= max_items or (lengths[i] * 2 < lengths[cur[0]] and len(cur) >= 8)):
            chunks.append(cur)
            cur = []
        cur.append(i)
    if cur:
        chunks.append(cur)
    return chunks


@dataclass
class Embedded:
    """Result of ``Embedder.embed_texts`` (plain data: crosses a deployment handle as is)."""
    vectors: np.ndarray | None
    n_tokens: int
    truncated: list[int]
    version: str
    dim: int
    normalize: bool
    too_long: int | None = None  # index of an input over max_length when truncation is off
    max_length: int = 0
    bad_token: tuple[int, int, int] | None = None  # (input, position, value) of a token id outside the vocabulary
    vocab_size: int = 0
    text_only: bool = False  # images were asked of a model without an image tower


def _threads() -> int:
    """Torch / ONNX Runtime threads for this replica: FASTEMB_SERVE_THREADS, else the CPUs Ray assigned to the actor."""
    env = int(os.environ.get("FASTEMB_SERVE_THREADS", "0"))
    if env:
        return env
    try:
        import ray

        return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)))
    except Exception:  # noqa: BLE001 - outside a Ray actor
        return 1


def _has_gpu() -> bool:
    try:
        import ray
        import torch

        return ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0) > 0 and torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


class Embedder:
    """The serving model of one arm; ``model`` is replaced as a whole when the registry's production changes."""

    def __init__(self, arm: dict, arm_name: str, batching: dict, precision: str = "auto"):
        import torch
        from ray.serve.metrics import Counter, Gauge, Histogram

        from fastemb.accelerator import inference_precision

        self.spec = ArmSpec.model_validate(arm)
        self.arm_name = arm_name
        threads = _threads()
        torch.set_num_threads(threads)
        self.device = "cuda" if _has_gpu() else "cpu"
        self.precision = inference_precision(precision, self.device)  # replica.precision: fp16 on a GPU by default
        version, path = resolve(self.spec)
        self.model: LoadedModel = load(self.spec, version, path, self.device, threads, self.precision)
        self.swaps = 0
        self._max_items = int(batching["max_batch_size"])
        self.reconfigure(batching)
        tags = ("arm",)
        self.m_batch = Histogram("fastemb_batch_size", "items per forward pass", _BATCH_BOUNDS, tags)
        self.m_tokens = Histogram("fastemb_batch_padded_tokens", "padded tokens per forward pass", _TOKEN_BOUNDS,
                                  tags)
        self.m_forward = Histogram("fastemb_forward_latency_ms", "forward pass latency", LATENCY_MS_BOUNDS, tags)
        self.m_items = Counter("fastemb_items_total", "inputs embedded", tags)
        self.m_queue = Gauge("fastemb_queue_depth", "inputs waiting or running in this replica", tags)
        self.m_swaps = Counter("fastemb_model_swaps_total", "model versions swapped in", tags)
        for m in (self.m_batch, self.m_tokens, self.m_forward, self.m_items, self.m_queue, self.m_swaps):
            m.set_default_tags({"arm": arm_name})
        self._pending = 0
        self.watcher = None
        if self.spec.registry and not self.spec.version:
            self.watcher = RegistryWatcher(self.spec, lambda: self.model.version, self._swap, self.device,
                                           self.spec.registry_poll_s, threads, self.precision).start()

    def _swap(self, model: LoadedModel) -> None:
        """Serve ``model`` from now on; inputs already tokenised keep the model they were tokenised for."""
        self.model = model
        self.swaps += 1
        self.m_swaps.inc()

    def reconfigure(self, cfg: dict) -> None:
        """Batching (user_config): max_batch_size (items), max_batch_tokens (padded), batch_wait_timeout_s."""
        budget = int(cfg["max_batch_tokens"])
        if budget < self.model.max_length:
            raise ValueError(f"batching.max_batch_tokens ({budget}) < the model's max_length "
                             f"({self.model.max_length}): one long input could never be batched")
        self._max_items = int(cfg["max_batch_size"])
        self._budget = budget
        self._embed_piece.set_max_batch_size(budget)
        self._embed_piece.set_batch_wait_timeout_s(float(cfg["batch_wait_timeout_s"]))
        self._embed_image_piece.set_max_batch_size(self._max_items)
        self._embed_image_piece.set_batch_wait_timeout_s(float(cfg["batch_wait_timeout_s"]))

    # ------------------------------------------------------------------ tokenise
    @staticmethod
    def _tokenize(model: LoadedModel, texts: list[str], truncate: bool) -> tuple[list[list[int]], list[int]]:
        """(token ids per text, indices of truncated texts); ids of a too-long text are kept when not truncating."""
        L = model.max_length
        tok = model.encoder.tokenizer
        ids = tok(texts, truncation=True, max_length=L + 1, add_special_tokens=True)["input_ids"]
        over = [i for i, x in enumerate(ids) if len(x) > L]
        if over and truncate:
            fixed = tok([texts[i] for i in over], truncation=True, max_length=L)["input_ids"]
            for i, x in zip(over, fixed):
                ids[i] = x
        return ids, over

    @staticmethod
    def _special_tokens(model: LoadedModel) -> tuple[list[int], list[int]]:
        """The ids the tokenizer puts before and after a text's own tokens (``[CLS]`` / ``[SEP]`` for BERT), found
        by tokenising a probe with and without special tokens (works for any single-sequence template)."""
        tok = model.encoder.tokenizer
        full = tok("a")["input_ids"]
        bare = tok("a", add_special_tokens=False)["input_ids"]
        for k in range(len(full) - len(bare) + 1):
            if full[k:k + len(bare)] == bare:
                return full[:k], full[k + len(bare):]
        raise RuntimeError("cannot locate a text's tokens inside the tokenizer's special-token template")

    @classmethod
    def _wrap_token_ids(cls, model: LoadedModel, token_lists: list[list[int]], truncate: bool
                        ) -> tuple[list[list[int]], list[int], tuple[int, int, int] | None]:
        """Token-id inputs (a text's ids, without special tokens) as the model takes them: ids checked against the
        vocabulary, the special tokens added around them, cut to max_length like a text. Returns (ids, indices of
        inputs over max_length, the first id outside the vocabulary as (input, position, value) or None)."""
        vocab = len(model.encoder.tokenizer)
        for i, ids in enumerate(token_lists):
            for j, t in enumerate(ids):
                if not 0 <= t < vocab:
                    return [], [], (i, j, t)
        head, tail = cls._special_tokens(model)
        room = model.max_length - len(head) - len(tail)
        out, over = [], []
        for i, ids in enumerate(token_lists):
            if len(ids) > room:
                over.append(i)
                if truncate:
                    ids = ids[:room]
            out.append([*head, *ids, *tail])
        return out, over, None

    # ------------------------------------------------------------------ forward
    def _forward(self, model: LoadedModel, ids_list: list[list[int]]) -> np.ndarray:
        """Vectors of token-id lists through the model's forward pass (ONNX Runtime or torch), length-chunked."""
        pad_id = model.encoder.tokenizer.pad_token_id or 0
        out = np.empty((len(ids_list), model.dim), dtype=np.float32)
        lengths = [len(x) for x in ids_list]
        for chunk in chunks_by_length(lengths, self._max_items):
            out[chunk] = model.forward(*pad_batch([ids_list[i] for i in chunk], pad_id))
        return out

    def _encode_images(self, model: LoadedModel, images: list) -> np.ndarray:
        """Vectors of pictures through the model's image tower."""
        return model.images.encode_images(images, batch_size=self._max_items)

    def _forward_groups(self, items: list, run=None) -> list[np.ndarray]:
        """Forward a batch (``run(model, inputs)``: default the text forward pass); items prepared for different
        model versions (around a swap) go to their own model, the last element of each item."""
        run = run or self._forward
        groups: dict[int, tuple[LoadedModel, list[int]]] = {}
        for pos, it in enumerate(items):
            groups.setdefault(id(it[-1]), (it[-1], []))[1].append(pos)
        out: list = [None] * len(items)
        for model, positions in groups.values():
            flat = [ids for p in positions for ids in items[p][0]]
            vecs = run(model, flat)
            start = 0
            for p in positions:
                n = len(items[p][0])
                out[p] = vecs[start:start + n]
                start += n
        return out

    @serve.batch(max_batch_size=8192, batch_wait_timeout_s=0.0, batch_size_fn=_batch_cost)
    async def _embed_piece(self, items: list[tuple[list[list[int]], int, LoadedModel]]) -> list[np.ndarray]:
        started = time.perf_counter()
        vecs = await asyncio.to_thread(self._forward_groups, items)
        self.m_forward.observe((time.perf_counter() - started) * 1000)
        n = sum(len(it[0]) for it in items)
        self.m_batch.observe(n)
        self.m_tokens.observe(max(len(x) for it in items for x in it[0]) * n)
        self.m_items.inc(n)
        return vecs

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0, batch_size_fn=_image_count)
    async def _embed_image_piece(self, items: list[tuple[list, LoadedModel]]) -> list[np.ndarray]:
        """Pictures of several requests through the image tower in one pass (at most ``max_batch_size`` images)."""
        started = time.perf_counter()
        vecs = await asyncio.to_thread(self._forward_groups, items, self._encode_images)
        self.m_forward.observe((time.perf_counter() - started) * 1000)
        n = sum(len(it[0]) for it in items)
        self.m_batch.observe(n)
        self.m_items.inc(n)
        return vecs

    async def _embed_ids(self, model: LoadedModel, ids_list: list[list[int]]) -> np.ndarray:
        """One batch item per piece of the request (not per input: the batch queue's cost grows with items)."""
        self._pending += len(ids_list)
        self.m_queue.set(self._pending)
        try:
            parts = pieces([len(x) for x in ids_list], self._max_items, self._budget)
            vecs = await asyncio.gather(*[self._embed_piece(([ids_list[i] for i in part], self._max_items, model))
                                          for part in parts])
        finally:
            self._pending -= len(ids_list)
            self.m_queue.set(self._pending)
        return vecs[0] if len(vecs) == 1 else np.concatenate(vecs)

    # ------------------------------------------------------------------ public
    async def embed_texts(self, texts: list[str], truncate: bool = True) -> Embedded:
        """Vectors of ``texts`` with the model serving now, batched with other requests' inputs."""
        model = self.model  # one version for the whole request, even if a swap lands meanwhile
        ids, over = self._tokenize(model, texts, truncate)  # on the loop: fast tokenisers are not thread-safe
        return await self._embed_prepared(model, ids, over, truncate)

    async def embed_token_ids(self, token_lists: list[list[int]], truncate: bool = True) -> Embedded:
        """Vectors of inputs given as token ids of the model's tokenizer (OpenAI's token-array input): equal to the
        vectors of a text those ids tokenise; an id outside the vocabulary comes back as ``bad_token``."""
        model = self.model
        ids, over, bad = self._wrap_token_ids(model, token_lists, truncate)
        if bad is not None:
            return Embedded(None, 0, [], model.version, model.dim, model.normalize, max_length=model.max_length,
                            bad_token=bad, vocab_size=len(model.encoder.tokenizer))
        return await self._embed_prepared(model, ids, over, truncate)

    async def _embed_prepared(self, model: LoadedModel, ids: list[list[int]], over: list[int],
                              truncate: bool) -> Embedded:
        if over and not truncate:
            return Embedded(None, 0, over, model.version, model.dim, model.normalize, over[0], model.max_length)
        vecs = await self._embed_ids(model, ids)
        return Embedded(vecs, sum(len(x) for x in ids), over, model.version, model.dim, model.normalize,
                        None, model.max_length)

    async def search_texts(self, texts: list[str], k: int) -> tuple[list[list[dict]] | None, Embedded]:
        """Top-k hits per query from the backend of the same model version that embedded the queries."""
        model = self.model
        if model.backend is None:
            return None, Embedded(None, 0, [], model.version, model.dim, model.normalize)
        ids, over = self._tokenize(model, texts, True)
        vecs = await self._embed_ids(model, ids)
        hits = await asyncio.to_thread(model.backend.search, vecs, k)
        return hits, Embedded(None, sum(len(x) for x in ids), over, model.version, model.dim, model.normalize)

    async def embed_images(self, images: list) -> Embedded:
        """Vectors of pictures (RGB) with the image tower of the model serving now, batched with other requests';
        ``text_only`` when that model has none."""
        model = self.model
        if model.images is None:
            return Embedded(None, 0, [], model.version, model.dim, model.normalize, text_only=True)
        return Embedded(await self._embed_pictures(model, images), 0, [], model.version, model.dim, model.normalize)

    async def _embed_pictures(self, model: LoadedModel, images: list) -> np.ndarray:
        """One batch item per ``max_batch_size`` pictures of the request."""
        step = self._max_items
        vecs = await asyncio.gather(*[self._embed_image_piece((images[i:i + step], model))
                                      for i in range(0, len(images), step)])
        return vecs[0] if len(vecs) == 1 else np.concatenate(vecs)

    async def search_images(self, images: list, k: int) -> tuple[list[list[dict]] | None, Embedded]:
        """Top-k hits per query picture (image → image over an image index, image → text over a text one)."""
        model = self.model
        if model.images is None:
            return None, Embedded(None, 0, [], model.version, model.dim, model.normalize, text_only=True)
        if model.backend is None:
            return None, Embedded(None, 0, [], model.version, model.dim, model.normalize)
        vecs = await self._embed_pictures(model, images)
        hits = await asyncio.to_thread(model.backend.search, vecs, k)
        return hits, Embedded(None, 0, [], model.version, model.dim, model.normalize)

    def info(self) -> dict:
        from fastemb.model.card import model_languages

        m = self.model
        if getattr(self, "_languages_of", None) != m.path:  # read once per model version
            self._languages_of, self._languages = m.path, model_languages(m.path)
        return {"arm": self.arm_name, "version": m.version, "path": m.path, "dim": m.dim,
                "languages": self._languages,
                "max_length": m.max_length, "normalize": m.normalize, "modalities": m.modalities,
                "index_size": getattr(m.backend, "size", None), "device": m.device,
                "inference_backend": m.forward.name, "precision": getattr(m.forward, "precision", "fp32"),
                "swaps": self.swaps,
                "registry": self.spec.registry, "follows_production": self.watcher is not None}

    def check_health(self) -> None:
        if self.model is None:
            raise RuntimeError("model not loaded")
