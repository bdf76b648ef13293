"""Which version an arm serves (fixed folder, pinned registry version, registry production) and the registry
watcher's load-then-swap rule, without Ray: real registry folders, real model loads."""
from __future__ import annotations

import pytest

from fastemb.registry import Registry, RegistryError
from fastemb.spec import ArmSpec
from fastemb.serve.versions import RegistryWatcher, resolve


@pytest.fixture(scope="module")
def reg(tmp_path_factory, minilm_path):
    tmp = tmp_path_factory.mktemp("versions")
    broken = tmp / "broken"
    broken.mkdir()
    (broken / "modules.json").write_text("[]")
    (broken / "model.safetensors").write_bytes(b"not weights")
    r = Registry(str(tmp / "registry"))
    r.register(minilm_path, {"ndcg@10": 0.5}, {})
    r.register(minilm_path, {"ndcg@10": 0.6}, {}, parent="v0001")
    r.register(str(broken), {"ndcg@10": 0.7}, {}, parent="v0002")
    return r


def test_resolve(reg, minilm_path):
    assert resolve(ArmSpec(model=minilm_path))[1] == minilm_path
    assert resolve(ArmSpec(model="all-MiniLM-L6-v2"))[0] == "all-MiniLM-L6-v2"
    with pytest.raises(RuntimeError, match="no production version"):
        resolve(ArmSpec(registry=reg.root))
    assert resolve(ArmSpec(registry=reg.root, version="v0002")) == ("v0002", reg.model_path("v0002"))
    with pytest.raises(RegistryError, match="v0009"):
        resolve(ArmSpec(registry=reg.root, version="v0009"))


def test_watcher_swaps_only_loaded_versions(reg):
    arm = ArmSpec(registry=reg.root)
    served = {"version": "v0001"}
    swapped = []

    def swap(model):
        swapped.append(model)
        served["version"] = model.version

    w = RegistryWatcher(arm, lambda: served["version"], swap)
    reg.promote("v0001")
    assert w.check_once() is False and swapped == []  # nothing changed
    reg.promote("v0002")
    assert w.check_once() is True and served["version"] == "v0002"
    m = swapped[-1]
    assert m.version == "v0002" and m.path == reg.model_path("v0002") and m.encoder.encode(["x"]).shape == (1, m.dim)
    reg.promote("v0003", force=True)  # broken: refused by the load, the served version stays
    assert w.check_once() is False and served["version"] == "v0002" and w.failed == "v0003"
    assert w.check_once() is False and len(swapped) == 1  # not retried while production stays on it
    reg.rollback()
    reg.rollback()
    assert w.check_once() is True and served["version"] == "v0001" and w.failed is None
