"""The ONNX Runtime backend: vectors equal to the torch Encoder's (MiniLM, a layer-subset student with new tokens and
adapters, a model with a synonym dictionary), one cached export per model folder, and the index / serve paths using
it. Real models, real WordNet definitions; the export cache is a temporary folder."""
from __future__ import annotations

import os
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fastemb.model import onnx_backend
from fastemb.model.encoder import Encoder
from fastemb.model.forward import load_forward
from fastemb.model.onnx_backend import (OnnxEncoder, OnnxExportError, TorchForward, onnx_path,
                                        pad_batch, resolve_backend)

WORDNET = os.path.join(os.path.dirname(onnx_backend.__file__), "..", "datasets", "wordnet")
ATOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """A fresh export cache for the module (``$FASTEMB_CACHE``)."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("cache")
        mp.setenv("FASTEMB_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """50 real definitions spread over the length range (shortest to longest), plus one over 256 tokens."""
    corpus = pq.read_table(os.path.join(WORDNET, "test_corpus.parquet"), columns=["text"]).column("text").to_pylist()
    by_len = sorted(set(corpus), key=len)
    picks = [by_len[round(i * (len(by_len) - 1) / 48)] for i in range(49)]
    return picks + [" ".join(picks[-3:] * 8)]


@pytest.fixture(scope="module")
def minilm() -> Encoder:
    return Encoder.load("all-MiniLM-L6-v2").eval()


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory) -> str:
    """A saved 3-layer student of MiniLM with two new domain tokens and (non-zero) adapters."""
    from fastemb.model.adapters import with_adapters
    from fastemb.model.layers import keep_layers
    from fastemb.model.new_tokens import add_domain_tokens

    enc = Encoder.load("all-MiniLM-L6-v2")
    keep_layers(enc.transformer, [0, 2, 4])
    add_domain_tokens(enc.transformer, enc.tokenizer, ["kubectl", "Kubernetes"])
    enc.transformer = with_adapters(enc.transformer, size=16, layers=[0, 2])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in enc.transformer.named_parameters():
            if ".adapter." in name:  # the up-projection starts at zero: make the adapters matter
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    out = tmp_path_factory.mktemp("student") / "model"
    enc.save(out)
    return str(out)


def _onnx_vectors(encoder: Encoder, model_dir: str, texts: list[str]) -> np.ndarray:
    """ONNX vectors of ``texts`` in one padded batch (every row but the longest padded)."""
    tok = encoder.tokenizer
    ids = tok(texts, truncation=True, max_length=encoder.max_length)["input_ids"]
    return OnnxEncoder(onnx_path(model_dir, encoder))(*pad_batch(ids, tok.pad_token_id or 0))


def test_minilm_vectors_equal_torch(minilm, texts):
    got = _onnx_vectors(minilm, "all-MiniLM-L6-v2", texts)
    assert got.dtype == np.float32 and got.shape == (len(texts), 384)
    np.testing.assert_allclose(got, minilm.encode(texts), atol=ATOL, rtol=0)


def test_layer_subset_student_with_new_tokens_and_adapters(student_dir, texts):
    student = Encoder.load(student_dir).eval()
    assert student.transformer.config.num_hidden_layers == 3
    mixed = texts + ["kubectl apply on a Kubernetes cluster"]
    np.testing.assert_allclose(_onnx_vectors(student, student_dir, mixed), student.encode(mixed), atol=ATOL, rtol=0)


def test_synonym_dictionary_stays_in_the_tokenizer(tmp_path, minilm, texts):
    syn = tmp_path / "syn.tsv"
    syn.write_text("NYC\tnew york city\n")
    Encoder.load("all-MiniLM-L6-v2", synonyms=str(syn)).save(tmp_path / "model")
    model_dir = str(tmp_path / "model")
    assert (tmp_path / "model" / "synonyms.json").exists()
    enc = Encoder.load(model_dir).eval()
    got = _onnx_vectors(enc, model_dir, ["flights to NYC", *texts[:20]])
    np.testing.assert_allclose(got, enc.encode(["flights to NYC", *texts[:20]]), atol=ATOL, rtol=0)
    np.testing.assert_allclose(got[0], minilm.encode(["flights to new york city"])[0], atol=ATOL, rtol=0)


def test_export_is_cached_once_per_model_folder(tmp_path, student_dir, monkeypatch):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(student_dir, model)  # same names, sizes and mtimes: same key as student_dir
    monkeypatch.setenv("FASTEMB_CACHE", str(tmp_path / "cache"))
    calls = []
    real = onnx_backend.export_onnx
    monkeypatch.setattr(onnx_backend, "export_onnx", lambda *a, **k: (calls.append(a[2]), real(*a, **k)))
    paths: list = []
    workers = [threading.Thread(target=lambda: paths.append(onnx_path(model))) for _ in range(3)]
    for w in workers:  # concurrent callers: one export (file lock), the others wait and reuse it
        w.start()
    for w in workers:
        w.join()
    assert len(calls) == 1 and len(set(paths)) == 1 and paths[0].is_file()
    first = paths[0]
    assert onnx_path(model, Encoder.load(str(model))) == first and len(calls) == 1  # loaded encoder: same key
    assert [p.name for p in first.parent.iterdir() if p.name != ".lock"] == ["model.onnx"]  # no temporary left
    cls = onnx_path(model, pooling="cls")
    assert cls != first and len(calls) == 2                                           # other pooling: new export
    os.utime(model / "model.safetensors", ns=(1, 1))                                  # changed weights file
    monkeypatch.setattr(onnx_backend, "KEEP_EXPORTS", 2)
    second = onnx_path(model)
    assert second != first and second.is_file() and len(calls) == 3
    assert cls.is_file() and not first.parent.exists()                               # least recently used: pruned


def test_export_failure_says_use_torch(tmp_path, student_dir, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setenv("FASTEMB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(OnnxExportError, match=r"unsupported operator.*use embed.backend: torch"):
        load_forward(Encoder.load(student_dir), student_dir, "onnx", field="embed.backend")
    assert not list((tmp_path / "cache").rglob("*.onnx*"))  # nothing half-written left behind
    assert load_forward(Encoder.load(student_dir), student_dir, "torch").name == "torch"


def test_backend_choice_and_spec_fields():
    from fastemb.spec import SpecError, parse_spec

    assert resolve_backend("auto", "cpu") == "onnx" and resolve_backend("auto", "cuda") == "torch"
    assert resolve_backend("torch", "cuda") == "torch"
    with pytest.raises(ValueError, match="production.backend: onnx runs on CPU only"):
        resolve_backend("onnx", "cuda", "production.backend")
    assert parse_spec({"job": "index", "corpus": {"path": "x.parquet"}}).embed.backend == "auto"
    with pytest.raises(SpecError, match="embed.backend"):
        parse_spec({"job": "index", "corpus": {"path": "x.parquet"}, "embed": {"backend": "tensorrt"}})
    assert parse_spec({"job": "serve"}).production.backend == "auto"
    with pytest.raises(SpecError, match="candidate.backend: onnx runs on CPU only"):
        parse_spec({"job": "serve", "candidate": {"backend": "onnx"}, "replica": {"num_gpus": 1}})


def test_embed_actor_onnx_equals_torch(texts):
    from fastemb.index.embed import EmbedActor

    batch = pa.table({"id": [str(i) for i in range(len(texts))], "text": texts})
    model = {"base": "all-MiniLM-L6-v2", "max_length": 128}
    out = {}
    for backend in ("onnx", "torch", "auto"):
        actor = EmbedActor(model, "id", "text", max_batch_tokens=512, backend=backend)
        assert actor.forward.name == ("torch" if backend == "torch" else "onnx")
        table = actor(batch)
        assert table.column("id").to_pylist() == batch.column("id").to_pylist()
        out[backend] = np.array(table.column("vector").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(out["onnx"], out["torch"], atol=ATOL, rtol=0)
    np.testing.assert_array_equal(out["auto"], out["onnx"])


def test_serving_forward_uses_onnx_and_matches_torch(student_dir, texts):
    from fastemb.serve.embedder import Embedder
    from fastemb.spec import ArmSpec
    from fastemb.serve.versions import load

    stub = Embedder.__new__(Embedder)  # _forward needs only the batching bound
    stub._max_items = 16
    vecs = {}
    for backend in ("auto", "torch"):
        served = load(ArmSpec(model=student_dir, backend=backend), "v1", student_dir, threads=2)
        assert served.forward.name == ("onnx" if backend == "auto" else "torch")
        if backend == "auto":
            assert served.forward.threads == 2 and isinstance(served.forward, OnnxEncoder)
        else:
            assert isinstance(served.forward, TorchForward)
        ids, _ = Embedder._tokenize(served, texts, True)
        vecs[backend] = stub._forward(served, ids)
    np.testing.assert_allclose(vecs["auto"], vecs["torch"], atol=ATOL, rtol=0)
