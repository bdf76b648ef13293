"""Continual learning on real training runs: start from the registry's production version, register the
candidate with its lineage, promote it when it does not regress, and keep production when it does."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fastemb.data.pairs import resolve_pairs_path
from fastemb.eval.retrieval import evaluate_model
from fastemb.registry import Registry
from fastemb.spec import SpecError, parse_spec
from fastemb.train.job import run_train


def continual_spec(tmp_path, tiny_eval, registry, name, lr, train="wordnet", **continual):
    return parse_spec({
        "name": name, "storage_path": str(tmp_path), "model": {"max_length": 32},
        "data": {"train": train, "max_pairs": 64, "eval": tiny_eval}, "general": None,
        "train": {"num_workers": 1, "cpus_per_worker": 1, "micro_batch_size": 16, "lr": lr, "max_grad_norm": 0,
                  "warmup_ratio": 0, "checkpoint_every": 1000, "eval_every": 1000, "max_failures": 0},
        "continual": {"registry": str(registry), **continual}})


def test_continual_training_promotes_or_keeps_production(ray_local, tmp_path, tiny_eval, tiny_model):
    registry = Registry(str(tmp_path / "registry"))
    seed_spec = continual_spec(tmp_path, tiny_eval, tmp_path / "registry", "seed", 1e-4)
    registry.register(tiny_model, evaluate_model(seed_spec.model, seed_spec.data, path=tiny_model), {"seed": True})
    registry.promote("v0001")

    # 1) a normal update, started from production; min_gain -1 makes the gate pass whatever the score. Its pairs
    # carry weights, as `fastemb feedback export` writes them (click weights reach the loss through the workers)
    pairs = pq.read_table(resolve_pairs_path("wordnet")).slice(0, 64).to_pylist()
    weighted = tmp_path / "weighted.parquet"
    pq.write_table(pa.Table.from_pylist([{**p, "weight": 0.5 + (i % 3) * 0.5} for i, p in enumerate(pairs)]), weighted)
    report = run_train(continual_spec(tmp_path, tiny_eval, tmp_path / "registry", "update", 5e-5, str(weighted),
                                      min_gain=-1.0))
    d = report["continual"]
    assert (d["parent"], d["candidate"], d["outcome"]) == ("v0001", "v0002", "promoted")
    assert registry.state()["production"] == "v0002"
    meta = registry.show("v0002")
    assert meta["parent"] == "v0001" and meta["data_fingerprint"]
    assert meta["metrics"]["ndcg@10"] == pytest.approx(report["tuned"]["ndcg@10"])
    # the starting point was production's model, scored on the same eval set
    assert d["production_score"] == pytest.approx(report["base"]["ndcg@10"])

    # 2) a destructive update (huge learning rate): it scores below production, so production stays
    report = run_train(continual_spec(tmp_path, tiny_eval, tmp_path / "registry", "bad", 0.3))
    d = report["continual"]
    assert d["parent"] == "v0002" and d["candidate"] == "v0003"
    assert d["candidate_score"] < d["production_score"]
    assert d["outcome"] == "rejected" and "production v0002" in d["reason"]
    assert registry.state() == {"production": "v0002", "history": ["v0001", "v0002"]}
    assert registry.show("v0003")["parent"] == "v0002"


def test_continual_needs_a_production_version(tmp_path, tiny_eval):
    Registry(str(tmp_path / "empty"))
    spec = continual_spec(tmp_path, tiny_eval, tmp_path / "empty", "x", 1e-4)
    from fastemb.registry import RegistryError
    from fastemb.train.continual import start_from_registry

    with pytest.raises(RegistryError, match="no production version"):
        start_from_registry(spec)
    with pytest.raises(SpecError, match="continual.promote"):
        parse_spec({"continual": {"registry": "r", "promote": "maybe"}})
