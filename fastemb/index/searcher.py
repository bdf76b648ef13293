"""Searching a built index: query texts → top-k document ids, scores and texts (chunks aggregated per doc)."""
from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq

from fastemb.index.binary import hamming_similarity, is_binary
from fastemb.data.chunking import aggregate_doc_scores
from fastemb.index.factory import set_search_params
from fastemb.index.refine import SCALES_FILE, STORE_FILES, open_store, refine_k_factor, rerank_from_disk
from fastemb.storage import is_uri, local_copy

INDEX_FILES = ("manifest.json", "index.faiss", "ids.parquet", "compressor", *STORE_FILES.values(),
               SCALES_FILE)  # what search reads


class Searcher:
    """An index folder (``manifest.json``, ``index.faiss``, ``ids.parquet``, optional ``compressor/`` and
    ``refine_vectors.f16`` or ``.i8`` + ``refine_scales.npy``), or its object-store URI (fetched into a local cache,
    again only when its manifest changed: fastemb/storage.py). With ``index.refine: disk`` the vector file is
    memory-mapped (read-only) once. A binary index's scores are 1 − 2·Hamming/d, or inner products once re-scored."""

    def __init__(self, index_dir: str | Path, encoder=None, nprobe: int | None = None,
                 ef_search: int | None = None):
        self.dir = local_copy(str(index_dir), INDEX_FILES) if is_uri(str(index_dir)) else Path(index_dir)
        if not (self.dir / "manifest.json").exists():
            raise FileNotFoundError(f"{self.dir}: no manifest.json; is this a folder written by `fastemb index`?")
        self.manifest = json.loads((self.dir / "manifest.json").read_text())
        cfg = self.manifest["config"]
        self.index = faiss.read_index(str(self.dir / "index.faiss"))
        refine, dtype = cfg["index"]["refine"], cfg["index"].get("refine_dtype", "float16")
        self.k_factor = refine_k_factor(refine, cfg["index"]["k_factor"], cfg["index"]["type"])
        set_search_params(self.index, nprobe or cfg["index"]["nprobe"], ef_search or cfg["index"]["ef_search"],
                          self.k_factor)
        self.binary = is_binary(self.index)
        # re-scoring ranks by inner product; faiss holds the binary (Hamming) index as an L2 one
        self.metric = faiss.METRIC_INNER_PRODUCT if self.binary else self.index.metric_type
        store_file = self.dir / STORE_FILES[dtype]
        self.store = open_store(store_file, self.index.d) if refine == "disk" else None
        self.scales = np.load(self.dir / SCALES_FILE) if refine == "disk" and dtype == "int8" else None
        if self.store is not None and len(self.store) != self.index.ntotal:
            raise ValueError(f"{store_file}: {len(self.store)} vectors for {self.index.ntotal} index "
                             "entries; rebuild the index")
        table = pq.read_table(self.dir / "ids.parquet")
        self.ids = table.column("id").to_pylist()
        self.texts = table.column("text")
        chunking = cfg["chunking"]
        self.aggregate = chunking["aggregate"] if chunking["enabled"] else None
        self.compressor = None
        if (self.dir / "compressor" / "compressor.json").exists():
            from fastemb.compress import load_compressor

            self.compressor = load_compressor(self.dir / "compressor")
        self._encoder = encoder

    @property
    def encoder(self):
        """The indexed model: a text ``Encoder``, or an ``ImageTextModel`` (its text tower embeds text queries, its
        image tower image queries)."""
        if self._encoder is None:
            from fastemb.model.encoder import Encoder, resolve_model_path
            from fastemb.model.image_text import ImageTextModel, is_image_text_folder

            model = self.manifest["config"]["model"]
            if is_image_text_folder(resolve_model_path(model["base"])):
                self._encoder = ImageTextModel.load(resolve_model_path(model["base"]), max_length=model["max_length"])
            else:
                self._encoder = Encoder.from_spec(model)
        return self._encoder

    def embed_queries(self, queries: list[str]) -> np.ndarray:
        """Queries → vectors in the index's space (encoded, then compressed like the documents)."""
        q = self.encoder.encode(queries, batch_size=128)
        return self.compressor.transform(q) if self.compressor else q

    def search_vectors(self, q: np.ndarray, k: int) -> list[list[tuple[str, float, int]]]:
        """(doc id, score, row of the best entry) per query, best first."""
        fetch = min(k if self.aggregate is None else max(8 * k, 100), self.index.ntotal)
        q = np.ascontiguousarray(q, dtype=np.float32)
        if self.store is None:
            scores, rows = self.index.search(q, fetch)
            if self.binary:
                scores = hamming_similarity(scores, self.index.d)
        else:  # refine disk: k_factor × candidates from the codes, re-ranked with the vectors on disk
            cand = self.index.search(q, min(fetch * self.k_factor, self.index.ntotal))[1]
            scores, rows = rerank_from_disk(cand, q, self.store, fetch, self.metric, self.scales)
        out = []
        for srow, irow in zip(scores, rows):
            valid = irow >= 0
            srow, irow = srow[valid], irow[valid]
            if self.aggregate is None:
                out.append([(self.ids[i], float(s), int(i)) for s, i in zip(srow, irow)])
                continue
            docs = [self.ids[i] for i in irow]
            best_row: dict[str, int] = {}
            for d, i in zip(docs, irow):
                best_row.setdefault(d, int(i))
            out.append([(d, s, best_row[d]) for d, s in aggregate_doc_scores(docs, srow, self.aggregate, k)])
        return out

    def search(self, queries: list[str], k: int = 10) -> list[list[dict]]:
        """Top-k hits per query: ``{"id", "score", "text"}`` (for chunked indexes, text = the best chunk)."""
        return self.search_embedded(self.encoder.encode(list(queries), batch_size=128), k)

    def search_images(self, images: list, k: int = 10) -> list[list[dict]]:
        """Top-k hits per query image (PIL images; image → image or image → text with an image–text model)."""
        if not hasattr(self.encoder, "encode_images"):
            from fastemb.data.pairs import DataError

            raise DataError(f"{self.dir}: indexed with a text-only model ({self.manifest['config']['model']['base']}),"
                             " which cannot embed image queries")
        return self.search_embedded(self.encoder.encode_images(images), k)

    def search_embedded(self, vectors: np.ndarray, k: int) -> list[list[dict]]:
        """Top-k hits per query vector as the model outputs it (compressed here like the documents)."""
        q = self.compressor.transform(vectors) if self.compressor else vectors
        return [[{"id": d, "score": s, "text": self.texts[r].as_py()} for d, s, r in row]
                for row in self.search_vectors(q, k)]


def search(index_dir: str | Path, queries: list[str], k: int = 10, **kwargs) -> list[list[dict]]:
    """One-call search: load the index folder (or URI) and return top-k hits per query."""
    return Searcher(index_dir, **kwargs).search(queries, k)
