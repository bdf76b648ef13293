"""``index.type: binary`` (sign bits, Hamming search) and re-scoring from an fp16 or int8 store on disk: no Ray."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from fastemb.index.binary import NotUnitNormError, check_unit_norm, hamming_similarity, is_binary
from fastemb.index.evaluate import recall_at_k
from fastemb.index.factory import INDEX_TYPES, code_bytes, factory_string, make_index
from fastemb.index.refine import STORE_FILES, int8_scales, open_store, refine_k_factor, rerank_from_disk, to_store
from fastemb.spec import IndexSpec, SpecError, parse_spec

faiss.omp_set_num_threads(1)


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray]:
    """2,000 unit vectors (64-d) around 200 centres, and 50 queries near those centres: neighbours are close."""
    rng = np.random.default_rng(1)
    centres = _unit(200, 64, 2)
    x = centres[rng.integers(0, 200, 2000)] + 0.15 * rng.standard_normal((2000, 64)).astype(np.float32)
    q = centres[:50] + 0.15 * rng.standard_normal((50, 64)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), \
        (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def test_binary_is_the_schemas_type_and_stores_a_sign_bit_per_dimension():
    assert INDEX_TYPES == tuple(IndexSpec.model_fields["type"].annotation.__args__) and "binary" in INDEX_TYPES
    index = make_index(384, factory_string("binary", 384, 1000, refine="disk"))
    assert is_binary(index) and code_bytes(index) == 384 // 8       # 48 B: 32× less than float32
    x = _unit(10, 384)
    index.add(x)
    codes = faiss.vector_to_array(faiss.downcast_index(index).codes).reshape(10, 48)
    assert np.array_equal(codes, np.packbits(x > 0, axis=1, bitorder="little"))
    d, ids = index.search(x[:2], 1)
    assert ids[:, 0].tolist() == [0, 1] and np.array_equal(hamming_similarity(d, 384), [[1.0], [1.0]])
    with pytest.raises(ValueError, match="index.refine"):
        factory_string("binary", 384, 10, refine="sq8")


def test_binary_parts_merge_in_order():
    x = _unit(300, 64)
    whole, a, b = (make_index(64, "LSH") for _ in range(3))
    whole.add(x)
    a.add(x[:120])
    b.add(x[120:])
    a.merge_from(b, 0)
    assert np.array_equal(faiss.vector_to_array(faiss.downcast_index(a).codes),
                          faiss.vector_to_array(faiss.downcast_index(whole).codes))


def test_vectors_that_are_not_normalised_are_refused_naming_the_field():
    check_unit_norm(_unit(50, 32))
    with pytest.raises(NotUnitNormError, match=r"index\.type=binary.*\(model\.normalize=true\) or another index\.type"):
        check_unit_norm(_unit(50, 32) * np.linspace(0.5, 2, 50, dtype=np.float32)[:, None])
    with pytest.raises(SpecError, match=r"index\.type=binary needs normalised vectors.*model\.normalize=true"):
        parse_spec({"job": "index", "index": {"type": "binary"}, "model": {"normalize": False}})


@pytest.mark.parametrize("index, field", [({"type": "binary", "refine": "flat"}, "index.refine"),
                                          ({"type": "binary", "pq_m": 8}, "index.pq_m"),
                                          ({"type": "binary", "nlist": 8}, "index.nlist"),
                                          ({"type": "ivf_pq", "refine_dtype": "int8"}, "index.refine_dtype")])
def test_settings_that_do_not_apply_name_the_field(index, field):
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        parse_spec({"job": "index", "index": index})
    ok = parse_spec({"job": "index", "index": {"type": "binary", "refine": "disk", "refine_dtype": "int8"}}).index
    assert refine_k_factor(ok.refine, ok.k_factor, ok.type) == 20 and refine_k_factor("disk", None) == 10


def test_rescoring_from_disk_lifts_binary_recall(clustered, tmp_path):
    x, q = clustered
    truth = [list(r) for r in np.argsort(-(q @ x.T), axis=1)[:, :10]]
    index = make_index(64, "LSH")
    index.add(x)
    plain = recall_at_k([list(r) for r in index.search(q, 10)[1]], truth)
    cand = index.search(q, 100)[1]
    found = {}
    for dtype in STORE_FILES:
        scales = int8_scales(x) if dtype == "int8" else None
        store = open_store(tmp_path / STORE_FILES[dtype], 64, len(x), mode="w+")
        store[:] = to_store(x, scales)
        store.flush()
        store = open_store(tmp_path / STORE_FILES[dtype], 64)
        assert store.dtype == np.dtype(dtype)
        found[dtype] = rerank_from_disk(cand, q, store, 10, scales=scales)[1]
    fp16, int8 = (recall_at_k([list(r) for r in found[t]], truth) for t in ("float16", "int8"))
    # 64 bits are coarse: 100 Hamming candidates hold most of the true top 10, the Hamming order does not
    assert fp16 > plain + 0.3 and abs(int8 - fp16) < 0.02, (plain, fp16, int8)


def test_int8_rerank_keeps_the_fp16_order_on_well_separated_data(tmp_path):
    """Candidates whose exact scores are far apart (0.9, 0.7, 0.5, ...) come out in the same order from both stores."""
    d, rng = 64, np.random.default_rng(3)
    q = _unit(1, d, 4)[0]
    ortho = _unit(8, d, 5) - np.outer(_unit(8, d, 5) @ q, q)
    ortho /= np.linalg.norm(ortho, axis=1, keepdims=True)
    cos = np.array([0.9, 0.7, 0.5, 0.3, 0.1, -0.1, -0.3, -0.5], dtype=np.float32)
    x = (cos[:, None] * q + np.sqrt(1 - cos[:, None] ** 2) * ortho).astype(np.float32)
    perm = rng.permutation(8)
    x = x[perm]
    scales = int8_scales(x)
    cand = rng.permutation(8)[None, :]
    f16 = rerank_from_disk(cand, q[None], x.astype(np.float16), 8)
    i8 = rerank_from_disk(cand, q[None], to_store(x, scales), 8, scales=scales)
    assert i8[1].tolist() == f16[1].tolist() == [np.argsort(perm).tolist()]
    np.testing.assert_allclose(i8[0], f16[0], atol=0.02)
    assert np.abs(to_store(x, scales)).max() == 127 and to_store(x, scales).dtype == np.int8


def test_a_sweep_entry_is_checked_when_the_spec_is_read():
    """A binary sweep entry inherits the job's index section (here nlist): refused before anything is embedded."""
    raw = {"job": "index", "index": {"type": "ivf_pq", "nlist": 8},
           "evaluate": {"enabled": True, "sweep": [{"name": "bin", "index": {"type": "binary", "refine": "disk"}}]}}
    with pytest.raises(SpecError, match=r"evaluate\.sweep\.0 \(bin\): index\.nlist=8 does not apply"):
        parse_spec(raw)
    raw["evaluate"]["sweep"][0]["index"]["nlist"] = None
    index, _ = parse_spec(raw).sweep_config(raw["evaluate"]["sweep"][0])
    assert (index.type, index.refine, index.nlist) == ("binary", "disk", None)
    raw["evaluate"]["sweep"][0]["index"] = {"typo": 1}
    with pytest.raises(SpecError, match=r"evaluate\.sweep\.0 \(bin\): index\.typo: unknown key"):
        parse_spec(raw)
