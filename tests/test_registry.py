"""Model registry: versions, gated promotion, rollback, atomic writes (with a crash injected mid-write)."""
from __future__ import annotations

import json

import pytest

from fastemb.cli import main
from fastemb.registry import Registry, RegistryError


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"weights")
    (d / "modules.json").write_text("[]")
    return str(d)


def test_register_promote_gate_and_rollback(tmp_path, model_dir):
    reg = Registry(str(tmp_path / "reg"))
    v1 = reg.register(model_dir, {"ndcg@10": 0.40}, {"lr": 1e-4}, data_files=[model_dir])
    v2 = reg.register(model_dir, {"ndcg@10": 0.38}, {"lr": 2e-4}, parent=v1)
    v3 = reg.register(model_dir, {"ndcg@10": 0.45}, {"lr": 5e-5}, parent=v1)
    assert reg.versions() == [v1, v2, v3] == ["v0001", "v0002", "v0003"]
    assert reg.show(v2)["parent"] == v1 and len(reg.show(v1)["data_fingerprint"]) == 64
    assert (tmp_path / "reg" / "versions" / v1 / "model" / "model.safetensors").read_bytes() == b"weights"

    reg.promote(v1)
    with pytest.raises(RegistryError, match="promotion refused"):
        reg.promote(v2)                                   # worse than production
    assert reg.state()["production"] == v1
    reg.promote(v3)
    assert reg.state()["production"] == v3
    reg.promote(v2, force=True)
    assert reg.rollback()["production"] == v3
    assert reg.rollback()["production"] == v1
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback()
    with pytest.raises(RegistryError, match="no version"):
        reg.show("v0042")


@pytest.mark.faults
def test_crash_mid_register_leaves_no_half_version(tmp_path, model_dir):
    reg = Registry(str(tmp_path / "reg"))
    v1 = reg.register(model_dir, {"ndcg@10": 0.4}, {})
    reg.promote(v1)
    with pytest.raises(RuntimeError, match="injected crash"):
        reg.register(model_dir, {"ndcg@10": 0.5}, {}, _crash_after_copy=True)
    assert reg.versions() == [v1]
    assert reg.state()["production"] == v1
    assert reg.register(model_dir, {"ndcg@10": 0.5}, {}) == "v0002"


@pytest.mark.faults
def test_torn_state_write_keeps_previous_state(tmp_path, model_dir):
    reg = Registry(str(tmp_path / "reg"))
    reg.promote(reg.register(model_dir, {"ndcg@10": 0.4}, {}))
    # a writer that died before its rename leaves only a temp file behind
    (tmp_path / "reg" / "state.json.tmp-dead").write_text('{"production": "v00')
    assert reg.state()["production"] == "v0001"


def test_registry_cli(tmp_path, model_dir, capsys):
    root = str(tmp_path / "reg")
    Registry(root).register(model_dir, {"ndcg@10": 0.4}, {})
    assert main(["registry", "promote", "v0001", "--root", root]) == 0
    assert main(["registry", "list", "--root", root]) == 0
    out = capsys.readouterr().out
    assert "v0001" in out and "production" in out
    assert main(["registry", "rollback", "--root", root]) == 2
    assert "nothing to roll back" in capsys.readouterr().err
    assert main(["registry", "show", "v0001", "--root", root]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["ndcg@10"] == 0.4


def test_gate_with_a_baseline_from_the_same_eval_set_and_resolve(tmp_path, model_dir):
    reg = Registry(str(tmp_path / "reg"))
    with pytest.raises(RegistryError, match="no production version"):
        reg.resolve("production")
    v1 = reg.register(model_dir, {"ndcg@10": 0.90}, {})          # scored on another (easier) eval set
    v2 = reg.register(model_dir, {"ndcg@10": 0.50}, {}, parent=v1)
    reg.promote(v1)
    assert reg.resolve("production") == v1 and reg.resolve(v2) == v2
    with pytest.raises(RegistryError, match="no version"):
        reg.resolve("v0099")
    with pytest.raises(RegistryError, match="promotion refused"):
        reg.promote(v2)                                           # stored scores: 0.50 < 0.90
    with pytest.raises(RegistryError, match="promotion refused"):
        reg.promote(v2, baseline=0.51)                            # production re-scored on v2's eval set
    assert reg.promote(v2, baseline=0.45)["production"] == v2
    assert reg.local_model(v2, tmp_path / "cache") == reg.model_path(v2)
