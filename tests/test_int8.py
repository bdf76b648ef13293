"""int8 inference (``backend: onnx-int8``, ``export.int8``): a real quantization of MiniLM's exported graph, its
vectors against fp32's, the dev check that writes or refuses the model folder's int8 file, and the folder's file
being the one every consumer runs until its weights change. Real model, real WordNet dev set; the export cache is a
temporary folder."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from fastemb.model.batching import embed_sequences
from fastemb.model.encoder import Encoder
from fastemb.model.forward import load_forward
from fastemb.model.onnx_backend import OnnxEncoder, onnx_path, resolve_backend
from fastemb.model.quantize import INT8_FILE, RECORD_FILE, folder_int8, int8_path, quantize_file

pytestmark = pytest.mark.unit

TEXTS = ["a domesticated carnivorous mammal", "the act of moving quickly on foot", "a large body of salt water",
         "an instrument for measuring time, a clock or a watch worn on the wrist", "x"]


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """A fresh export cache for the module (``$FASTEMB_CACHE``)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTEMB_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """MiniLM saved as a model folder fastemb exported."""
    out = tmp_path_factory.mktemp("export") / "model"
    Encoder.load("all-MiniLM-L6-v2").save(out, max_seq_length=256)
    return str(out)


def _vectors(path, encoder: Encoder) -> np.ndarray:
    seqs = encoder.tokenizer(TEXTS, truncation=True, max_length=encoder.max_length)["input_ids"]
    return embed_sequences(OnnxEncoder(path), seqs, encoder.tokenizer.pad_token_id or 0, encoder.dim)


def test_int8_graph_is_quantized_close_to_fp32_and_made_once(model_dir, tmp_path):
    encoder = Encoder.load(model_dir).eval()
    fp32, int8 = onnx_path(model_dir, encoder), int8_path(model_dir, encoder)
    ops = [n.op_type for n in onnx.load(str(int8), load_external_data=False).graph.node]
    layers = encoder.transformer.config.num_hidden_layers
    # every weight MatMul (Q, K, V, output, two feed-forward) runs in int8; the attention products stay float
    assert ops.count("MatMulInteger") == 6 * layers and ops.count("MatMul") == 2 * layers, ops
    assert int8.stat().st_size < 0.7 * fp32.stat().st_size  # int8 weights (the word embeddings stay fp32)
    a, b = _vectors(fp32, encoder), _vectors(int8, encoder)
    cosine = (a * b).sum(1)
    assert cosine.min() > 0.98, cosine  # close to fp32 ...
    assert np.abs(a - b).max() > 1e-4  # ... but not the fp32 graph
    made = int8.stat().st_mtime_ns
    assert int8_path(model_dir, Encoder.load(model_dir)) == int8 and int8.stat().st_mtime_ns == made  # cached

    uint8 = tmp_path / "uint8.onnx"  # export.int8.weights: uint8
    quantize_file(fp32, uint8, model_dir, weights="uint8")
    graph = onnx.load(str(uint8), load_external_data=False).graph
    initializers = {t.name: t.data_type for t in graph.initializer}
    weight_types = {initializers[n.input[1]] for n in graph.node if n.op_type == "MatMulInteger"}
    assert weight_types == {onnx.TensorProto.UINT8}
    assert (a * _vectors(uint8, encoder)).sum(1).min() > 0.98


def _train_spec(tolerance: float):
    from fastemb.spec import parse_spec

    return parse_spec({"job": "train", "data": {"dev_queries": 60, "dev_corpus": 400},
                       "export": {"int8": {"tolerance": tolerance}}})


def test_export_check_refuses_then_writes_the_folder_file(model_dir):
    from fastemb.train.export import int8_export

    folder = Path(os.path.realpath(model_dir))
    refused = int8_export(_train_spec(0.0), model_dir)
    # measured: int8 loses a little dev nDCG@10 on these 60 queries (deterministic: one thread, the same graph)
    assert refused["relative_loss"] > 0 and not refused["written"], refused
    assert "export.int8.tolerance" in refused["reason"]
    assert not (folder / INT8_FILE).exists() and not (folder / RECORD_FILE).exists()

    check = int8_export(_train_spec(0.05), model_dir)
    assert check["written"] and check["relative_loss"] == pytest.approx(refused["relative_loss"])
    assert check["dev_ndcg@10"]["int8"] > 0.3  # a real retrieval score, not a broken graph's
    encoder = Encoder.load(model_dir).eval()
    own = folder_int8(folder, encoder.pooling, encoder.normalize)
    assert own == folder / INT8_FILE
    assert json.loads((folder / RECORD_FILE).read_text())["check"]["written"]
    forward = load_forward(encoder, model_dir, "onnx-int8")
    assert forward.path == own and forward.name == "onnx-int8"  # every consumer runs the checked file
    # sentence-transformers' ONNX backend reads the first output, the token vectors: mean-pooled and normalised
    # (its Pooling and Normalize modules) they are the vector fastemb runs
    graph = onnx.load(str(own), load_external_data=False).graph
    assert [o.name for o in graph.output] == ["last_hidden_state", "emb"]
    ids = encoder.tokenizer(TEXTS, padding=True, return_tensors="np")
    tokens, emb = forward.session.run(None, {"input_ids": ids["input_ids"].astype(np.int64),
                                             "attention_mask": ids["attention_mask"].astype(np.int64)})
    mask = ids["attention_mask"][..., None]
    pooled = (tokens * mask).sum(1) / mask.sum(1)
    np.testing.assert_allclose(pooled / np.linalg.norm(pooled, axis=1, keepdims=True), emb, atol=1e-5)

    weights = folder / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # new weights
    assert folder_int8(folder, encoder.pooling, encoder.normalize) is None  # the stale file is not used
    assert int8_path(model_dir, encoder) != own


def test_int8_backend_is_cpu_only_and_named_in_errors():
    from fastemb.spec import SpecError, parse_spec

    assert resolve_backend("onnx-int8", "cpu") == "onnx-int8"
    with pytest.raises(ValueError, match="embed.backend: onnx-int8 runs on CPU only"):
        resolve_backend("onnx-int8", "cuda", "embed.backend")
    assert parse_spec({"job": "index", "embed": {"backend": "onnx-int8"}}).embed.backend == "onnx-int8"
    with pytest.raises(SpecError, match="production.backend: onnx-int8 runs on CPU only"):
        parse_spec({"job": "serve", "production": {"backend": "onnx-int8"}, "replica": {"num_gpus": 1}})
    with pytest.raises(SpecError, match="export.int8.tolerance"):
        parse_spec({"job": "train", "export": {"int8": {"tolerance": 2}}})
    with pytest.raises(SpecError, match="export.int8.weights"):
        parse_spec({"job": "train", "export": {"int8": {"weights": "int4"}}})
