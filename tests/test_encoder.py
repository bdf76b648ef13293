"""Encoder: sentence-transformers folder format both ways, pooling, metrics."""
from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from fastemb.eval.metrics import alignment, ranking_metrics, uniformity
from fastemb.model.encoder import Encoder

TEXTS = ["a member of the genus Canis", "dog, domestic dog", "x",
         "a long definition that goes on " * 6]


@pytest.fixture(scope="module")
def encoder(minilm_path):
    return Encoder.load(minilm_path)


def test_loads_sentence_transformers_folder_and_matches_it(encoder, minilm_path):
    ref = SentenceTransformer(minilm_path, device="cpu").encode(TEXTS)
    assert encoder.pooling == "mean" and encoder.normalize
    assert np.abs(encoder.encode(TEXTS) - ref).max() <= 1e-5


@pytest.mark.parametrize("pooling, normalize", [("mean", True), ("cls", False)])
def test_saved_model_loads_in_sentence_transformers_with_same_embeddings(encoder, tmp_path, pooling, normalize):
    encoder.pooling, encoder.normalize = pooling, normalize
    try:
        encoder.save(tmp_path / "m")
        ours = encoder.encode(TEXTS)
    finally:
        encoder.pooling, encoder.normalize = "mean", True
    st = SentenceTransformer(str(tmp_path / "m"), device="cpu")
    assert np.abs(st.encode(TEXTS) - ours).max() <= 1e-5
    again = Encoder.load(str(tmp_path / "m"))
    assert (again.pooling, again.normalize) == (pooling, normalize)
    assert np.abs(again.encode(TEXTS) - ours).max() <= 1e-5


def test_unknown_model_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="never downloads"):
        Encoder.load("sentence-transformers/some-hub-model")


def test_ranking_metrics_by_hand():
    m = ranking_metrics([["a", "b", "c"], ["x", "y", "z"]], [{"b"}, {"q"}])
    assert m["mrr@10"] == pytest.approx(0.25)
    assert m["ndcg@10"] == pytest.approx((1 / np.log2(3)) / 2)
    assert m["recall@1"] == 0 and m["recall@10"] == 0.5


def test_alignment_and_uniformity():
    x = np.eye(4, dtype=np.float32)
    assert alignment(x, x) == pytest.approx(0.0)
    assert alignment(x, np.roll(x, 1, axis=0)) == pytest.approx(2.0)
    assert uniformity(x) == pytest.approx(-4.0)
