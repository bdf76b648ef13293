"""Compression methods on real MiniLM embeddings of WordNet definitions: fit, save/load, and what they keep."""
from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest

from fastemb.compress import load_compressor, make_compressor
from fastemb.compress.pq import pq_factory, pq_m_for_bytes, train_pq_codec
from fastemb.eval.retrieval import exact_search
from fastemb.index.evaluate import recall_at_k
from fastemb.index.factory import factory_string

faiss.omp_set_num_threads(1)  # the test machine is shared: no OpenMP spinning
WORDNET = Path(__file__).resolve().parents[1] / "fastemb" / "datasets" / "wordnet"


@pytest.fixture(scope="module")
def emb(minilm_path) -> np.ndarray:
    import torch

    from fastemb.model.encoder import Encoder

    torch.set_num_threads(1)
    texts = pq.read_table(WORDNET / "test_corpus.parquet").column("text").to_pylist()[:400]
    return Encoder.load(minilm_path, max_length=64).encode(texts, batch_size=64)


def _recall(x: np.ndarray, y: np.ndarray, n_queries: int = 100) -> float:
    """recall@10 of neighbours in space y against neighbours in space x (first rows as queries)."""
    _, truth = exact_search(x[:n_queries], x, 11)
    _, found = exact_search(y[:n_queries], y, 11)
    return recall_at_k([list(r[1:]) for r in found], [list(r[1:]) for r in truth], 10)


@pytest.mark.parametrize("method,dim,params", [("pca", 96, {}), ("matryoshka", 192, {}),
                                               ("autoencoder", 96, {"epochs": 8}), ("pq", 384, {"bytes_per_vector": 24, "nbits": 4}),
                                               ("opq", 384, {"bytes_per_vector": 24, "nbits": 4, "opq_niter": 4})])
def test_fit_save_load_is_applied_identically(emb, method, dim, params, tmp_path):
    comp = make_compressor(method, emb.shape[1], dim, **params).fit(emb)
    out = comp.transform(emb)
    assert out.shape == (len(emb), comp.out_dim) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-4)   # re-normalised
    again = load_compressor(comp.save(tmp_path / method)).transform(emb)
    np.testing.assert_allclose(again, out, atol=1e-5)
    # more neighbours survive than with a random projection storing the same bytes per vector as float32
    rand = emb @ np.random.default_rng(0).standard_normal((emb.shape[1], comp.code_bytes // 4)).astype(np.float32)
    assert _recall(emb, out) > _recall(emb, rand)


def test_pca_full_rank_preserves_distances(emb):
    comp = make_compressor("pca", emb.shape[1], emb.shape[1], renormalize=False).fit(emb)
    y = comp.transform(emb[:50])
    d_x = np.linalg.norm(emb[:50, None] - emb[None, :50], axis=-1)
    d_y = np.linalg.norm(y[:, None] - y[None], axis=-1)
    np.testing.assert_allclose(d_y, d_x, atol=1e-4)


def test_pca_beats_truncation_of_a_non_matryoshka_model(emb):
    pca = make_compressor("pca", emb.shape[1], 64).fit(emb).transform(emb)
    cut = make_compressor("matryoshka", emb.shape[1], 64).fit(emb).transform(emb)
    np.testing.assert_allclose(cut, emb[:, :64] / np.linalg.norm(emb[:, :64], axis=1, keepdims=True), atol=1e-6)
    assert _recall(emb, pca) > _recall(emb, cut)


def test_pq_more_bytes_less_error(emb):
    errors = []
    for b in (8, 24, 48):
        comp = make_compressor("pq", emb.shape[1], renormalize=False, bytes_per_vector=b, nbits=4).fit(emb)
        assert comp.encode(emb[:3]).shape == (3, comp.code_bytes)
        errors.append(float(np.mean((comp.transform(emb) - emb) ** 2)))
    assert errors[0] > errors[1] > errors[2]


def test_pq_codecs_train_alike_without_faiss_clustering_warnings(capfd):
    """faiss prints a warning per sub-quantizer (and per OPQ iteration) below 39 training points per centroid."""
    x = np.random.RandomState(0).standard_normal((1500, 64)).astype("float32")
    for opq in (False, True):
        plain, quiet = (faiss.index_factory(64, pq_factory(64, 8, opq=opq)) for _ in range(2))
        plain.train(x)
        assert "WARNING clustering 1500 points to 256 centroids" in capfd.readouterr().err
        train_pq_codec(quiet, x)
        assert "WARNING clustering" not in capfd.readouterr().err
        assert np.array_equal(plain.sa_encode(x), quiet.sa_encode(x))


def test_bad_dims_are_refused():
    with pytest.raises(ValueError, match="compress.dim"):
        make_compressor("pca", 384, 500)
    with pytest.raises(ValueError, match="compress.method"):
        make_compressor("lsh", 384, 64)


def test_bytes_per_vector_picks_pq_params():
    assert pq_m_for_bytes(384, 96) == 96
    assert pq_m_for_bytes(384, 100) == 96
    assert pq_m_for_bytes(384, 50) == 48
    assert pq_m_for_bytes(384, 48, nbits=4) == 96
    assert factory_string("ivf_pq", 384, 10_000, bytes_per_vector=24) == "IVF256,PQ24np"   # N/39 caps 4*sqrt(N)
    assert factory_string("ivf_pq", 384, 1_000_000, bytes_per_vector=24) == "IVF4000,PQ24np"
    assert factory_string("opq_ivf_pq", 384, 10_000, nlist=64, bytes_per_vector=32, refine="flat") == \
        "OPQ32_384,IVF64,PQ32np,RFlat"
    assert factory_string("hnsw", 384, 10_000, hnsw_m=16) == "HNSW16"
    with pytest.raises(ValueError, match="refine"):
        factory_string("flat", 384, 10, refine="sq8")
