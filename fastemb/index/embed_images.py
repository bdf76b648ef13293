"""Image corpora on Ray Data: the encoder actor that embeds a batch of (id, image) rows with an image–text model's
image tower (fastemb/model/image_text.py).

A row's image is its bytes (``corpus.image_column``) or a file named by ``corpus.path_column`` (read on the actor's
node: a local or shared filesystem; a relative path is taken from ``root``, the corpus folder). Each image is decoded
with the limits of fastemb/data/images.py. A bad row is never a crash: it keeps its place in the shard with a
``skip`` reason and no vector, and the index job counts the reasons (``counts.skipped``): each ``ImageError`` reason
(``empty``, ``too_many_bytes``, ``unsupported_format``, ``corrupt``, ``truncated``, ``too_many_pixels``),
``missing_image`` (a null or empty value), ``unreadable_path`` (a file that cannot be read) and ``null id``.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fastemb.data.images import ImageError, decode_image
from fastemb.index.corpus import SKIP_NULL_ID
from fastemb.index.shard_rows import report_rss, shard_table

MISSING_IMAGE = "missing_image"
UNREADABLE_PATH = "unreadable_path"


def read_image_value(value, source: str, root: Path | None) -> bytes | str:
    """A row's image bytes, or why there are none (``missing_image`` / ``unreadable_path``)."""
    if source == "bytes":
        return bytes(value) if isinstance(value, (bytes, bytearray)) else MISSING_IMAGE  # b"": decoded as empty
    if not isinstance(value, str) or not value.strip():
        return MISSING_IMAGE
    path = Path(value).expanduser()
    try:
        return (path if path.is_absolute() or root is None else root / path).read_bytes()
    except OSError:
        return UNREADABLE_PATH


def decode_row(rid: str | None, value, source: str, root: Path | None, limits: dict):
    """``(PIL image, sha1 of its bytes)`` of one row, or its skip reason (a string)."""
    if rid is None:
        return SKIP_NULL_ID
    data = read_image_value(value, source, root)
    if isinstance(data, str):
        return data
    try:
        return decode_image(data, **limits), hashlib.sha1(data).hexdigest()
    except ImageError as err:
        return err.reason


class ImageEmbedActor:
    """Ray Data callable class: a pyarrow batch of (id, image bytes or path) rows → embedding-shard rows (the same
    columns as the text encoder's, ``text`` holding the path of a path row)."""

    def __init__(self, model: dict, id_column: str, image_column: str, source: str = "bytes",
                 root: str | None = None, limits: dict | None = None, threads: int = 1, num_gpus: float = 0.0,
                 rss_dir: str | None = None):
        import torch

        from fastemb.accelerator import inference_device
        from fastemb.model.image_text import ImageTextModel

        torch.set_num_threads(threads)
        device = inference_device(num_gpus, "embed.num_gpus")
        self.model = ImageTextModel.load(model["base"], max_length=model.get("max_length")).eval().to(device)
        self.id_column, self.image_column, self.source = id_column, image_column, source
        self.root = Path(root) if root else None
        self.limits, self.rss_dir = limits or {}, rss_dir

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids = pc.cast(batch.column(self.id_column).combine_chunks(), pa.string()).to_pylist()
        values = batch.column(self.image_column).to_pylist()
        decoded = [decode_row(i, v, self.source, self.root, self.limits) for i, v in zip(ids, values)]
        good = [d for d in decoded if not isinstance(d, str)]
        vectors = self.model.encode_images([im for im, _ in good]) if good else np.zeros((0, self.model.dim))
        vec_rows, skips, keys, n = [], [], [], 0
        for d in decoded:
            bad = isinstance(d, str)
            vec_rows.append(-1 if bad else n)
            skips.append(d if bad else None)
            keys.append("" if bad else d[1])
            n += not bad
        texts = [v if self.source == "path" and isinstance(v, str) else None for v in values]
        report_rss(self.rss_dir)
        return shard_table(ids, [0] * len(ids), texts, skips, vec_rows, vectors, self.model.dim, hash_keys=keys)
