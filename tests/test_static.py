"""Static token-embedding models (fastemb/model/static.py, ``fastemb static``): a real Model2Vec distillation of
MiniLM (vocabulary cut to the tokens of the tiny evaluation set, so it takes seconds), its retrieval quality against
a random ranking, the same vectors in sentence-transformers, Model2Vec, fastemb's evaluation and a serve arm's load
path (no Ray), and the errors that name the field."""
from __future__ import annotations

import numpy as np
import pytest

from fastemb.data.eval_sets import load_eval_set
from fastemb.eval.retrieval import evaluate_model, metrics_of_hits
from fastemb.model.batching import pad_batch
from fastemb.model.static import StaticEncoder, StaticModelError, distil_static
from fastemb.serve.versions import load
from fastemb.spec import ArmSpec, parse_spec
from fastemb.spec.sections import DataSpec, ModelSpec

pytestmark = pytest.mark.unit
DIM = 64


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory, tiny_eval) -> str:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few hundred 3-token forward passes: one thread is fastest on a shared machine
    try:
        data = load_eval_set(tiny_eval, "test")
        return str(distil_static("all-MiniLM-L6-v2", tmp_path_factory.mktemp("static") / "model", dim=DIM,
                                 vocab_texts=data.queries + data.corpus))
    finally:
        torch.set_num_threads(threads)


def test_static_model_retrieves_far_above_random(static_dir, tiny_eval):
    metrics = evaluate_model(ModelSpec(base=static_dir), DataSpec(eval=tiny_eval), "test")
    data = load_eval_set(tiny_eval, "test")
    rng = np.random.default_rng(0)
    random_ndcg = np.mean([metrics_of_hits(np.array([rng.permutation(len(data.corpus))[:100] for _ in data.queries]),
                                           data)["ndcg@10"] for _ in range(5)])
    assert metrics["ndcg@10"] > max(0.15, 5 * random_ndcg), (metrics["ndcg@10"], random_ndcg)


def test_saved_folder_gives_the_same_vectors_in_sentence_transformers_and_model2vec(static_dir, tiny_eval):
    from model2vec import StaticModel
    from sentence_transformers import SentenceTransformer

    texts = load_eval_set(tiny_eval, "test").queries[:20]
    ours = StaticEncoder.load(static_dir)
    vectors = ours.encode(texts)
    assert vectors.shape == (20, DIM) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    st = SentenceTransformer(static_dir, device="cpu")
    assert st.get_embedding_dimension() == DIM
    # the folder stores float16 rows; both libraries average them in their own precision
    np.testing.assert_allclose(st.encode(texts), vectors, atol=2e-3)
    np.testing.assert_allclose(StaticModel.from_pretrained(static_dir).encode(texts), vectors, atol=2e-3)


def test_serve_arm_loads_a_static_folder_as_its_own_forward_pass(static_dir, tiny_eval):
    texts = load_eval_set(tiny_eval, "test").queries[:8]
    model = load(ArmSpec(model=static_dir), "static", static_dir)
    assert model.forward.name == "static" and model.dim == DIM and model.normalize and model.backend is None
    tok = model.encoder.tokenizer  # what the Embedder tokenises with: no special tokens to add
    ids = tok(texts, truncation=True, max_length=model.max_length)["input_ids"]
    assert tok("a")["input_ids"] == tok("a", add_special_tokens=False)["input_ids"]
    np.testing.assert_allclose(model.forward(*pad_batch(ids, tok.pad_token_id or 0)), model.encoder.encode(texts),
                               atol=1e-6)
    with pytest.raises(StaticModelError, match="backend: onnx .*leave backend: auto"):
        load(ArmSpec(model=static_dir, backend="onnx"), "static", static_dir)


def test_a_dimension_the_model_does_not_have_is_refused_naming_the_field(tmp_path):
    with pytest.raises(StaticModelError, match=r"dim: 512 is more than the width of all-MiniLM-L6-v2 \(384\).*"
                                               r"dim ≤ 384, or dim: null"):
        distil_static("all-MiniLM-L6-v2", tmp_path / "m", dim=512)
    assert not (tmp_path / "m").exists()
    spec = parse_spec({"job": "static", "dim": 128, "vocab_from": "wordnet", "split": None})
    assert spec.dim == 128 and spec.output == "runs/static/model"
    with pytest.raises(Exception, match="dim"):
        parse_spec({"job": "static", "dim": 0})
