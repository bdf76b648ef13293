"""What a training job exports and how models merge: the exported length, the interpolation of weights, the models
that cannot be merged, the rule that chooses the weight, ``fastemb merge`` end to end on small real sets, and the
registry gates that use the general set."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fastemb.merge.select import choose_weight, gain_kept
from fastemb.merge.weights import MergeError, check_mergeable, interpolate, merged_encoder
from fastemb.model.encoder import Encoder, inference_length
from fastemb.spec import SpecError, parse_spec
from fastemb.train.export import export_length


def _swapped_vocabulary(src: str, out: Path) -> str:
    """A copy of a model whose tokenizer gives "the" and "of" each other's ids: the same weights and vocabulary size,
    another tokenizer."""
    shutil.copytree(src, out)
    tok = json.loads((out / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = vocab["the"], vocab["of"]
    vocab["the"], vocab["of"] = b, a
    (out / "tokenizer.json").write_text(json.dumps(tok))
    lines = (out / "vocab.txt").read_text().split("\n")
    lines[a], lines[b] = lines[b], lines[a]
    (out / "vocab.txt").write_text("\n".join(lines))
    return str(out)


@pytest.fixture(scope="module")
def other_model(tmp_path_factory, minilm_path) -> str:
    """A second model of MiniLM's architecture and tokenizer: its weights moved by seeded noise; it runs at 64 tokens
    per text (a merge runs at its first model's length: short texts keep the merge job's test fast)."""
    enc = Encoder.load(minilm_path)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in enc.transformer.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02 * p.std().clamp(min=1e-3))
    out = tmp_path_factory.mktemp("other") / "model"
    enc.save(out, max_seq_length=64)
    return str(out)


def test_export_keeps_the_bases_length_unless_the_spec_says(tmp_path, minilm_path):
    assert inference_length(minilm_path) == 256  # all-MiniLM-L6-v2's sentence_bert_config.json
    spec = parse_spec({"model": {"max_length": 32}})
    assert spec.model.max_length == 32 and export_length(spec) == 256
    assert export_length(parse_spec({"model": {"max_length": 32}, "export": {"max_seq_length": 128}})) == 128
    enc = Encoder.load(minilm_path, max_length=32)
    enc.save(tmp_path / "m", max_seq_length=256)
    assert json.loads((tmp_path / "m" / "sentence_bert_config.json").read_text())["max_seq_length"] == 256
    assert Encoder.load(str(tmp_path / "m")).max_length == 256
    # consumers given no length use the folder's own; the index and eval sections no longer default to 64
    assert parse_spec({"job": "index"}).model.max_length is None
    assert Encoder.from_spec(parse_spec({"job": "eval"}).model, str(tmp_path / "m")).max_length == 256


def test_interpolation_is_the_weighted_sum_of_the_weights(minilm_path, other_model):
    a, b = Encoder.load(other_model), Encoder.load(minilm_path)
    merged = merged_encoder([a, b], [0.7, 0.3])
    sa, sb = a.transformer.state_dict(), b.transformer.state_dict()
    for name, value in merged.transformer.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.7 * sa[name] + 0.3 * sb[name], atol=1e-6), name
        else:
            assert torch.equal(value, sa[name]), name
    moved = [n for n in sa if sa[n].is_floating_point() and not torch.equal(sa[n], sb[n])]
    assert moved and merged.max_length == a.max_length and merged.pooling == a.pooling
    ends = interpolate([sa, sb], [1.0, 0.0])
    assert all(torch.equal(ends[n], sa[n]) for n in sa)


def test_models_of_another_architecture_or_tokenizer_are_refused(tmp_path, minilm_path):
    base = Encoder.load(minilm_path)
    fewer = Encoder.load(minilm_path)
    fewer.transformer.encoder.layer = fewer.transformer.encoder.layer[:3]
    fewer.transformer.config.num_hidden_layers = 3
    with pytest.raises(MergeError, match=r"^models\.1\.path: architecture .*3 layers.* only models of one"):
        check_mergeable([base, fewer], ["models.0.path", "models.1.path"])
    swapped = _swapped_vocabulary(minilm_path, tmp_path / "swapped")
    with pytest.raises(MergeError, match=r"^model\.base: tokenizer differs .*same vocabulary size"):
        check_mergeable([base, Encoder.load(swapped)], ["the trained model", "model.base"])
    check_mergeable([base, Encoder.load(minilm_path)], ["a", "b"])  # the same model merges


def test_merge_weights_outside_the_unit_interval_name_the_field():
    for raw, field in (({"export": {"merge": {"weight": 1.5}}}, "export.merge.weight"),
                       ({"export": {"merge": {"grid": [0.5, -0.1]}}}, "export.merge.grid"),
                       ({"job": "merge", "models": [{"path": "a", "weight": 1.2}, {"path": "b", "weight": -0.2}]},
                        "models.0.weight"),
                       ({"job": "merge", "models": [{"path": "a"}, {"path": "b"}], "grid": [2]}, "grid")):
        with pytest.raises(SpecError, match=rf"\n  {field}: "):
            parse_spec(raw)
    with pytest.raises(SpecError, match="export.merge: with model.adapters"):
        parse_spec({"export": {"merge": {}}, "model": {"adapters": {}}})
    with pytest.raises(SpecError, match="models: the weights sum to 0.8"):
        parse_spec({"job": "merge", "models": [{"path": "a", "weight": 0.5}, {"path": "b", "weight": 0.3}]})
    assert parse_spec({"export": {"merge": {"grid": [1, 0.5, 0.5]}}}).export.merge.grid == [0.5, 1.0]


def test_the_weight_rule_keeps_general_within_tolerance_then_maximises_in_domain():
    base = {"in_domain": 0.50, "general": 0.80}
    rows = [{"weight": 0.5, "in_domain": 0.58, "general": 0.799},
            {"weight": 0.8, "in_domain": 0.61, "general": 0.796},
            {"weight": 0.9, "in_domain": 0.61, "general": 0.795},
            {"weight": 1.0, "in_domain": 0.62, "general": 0.78}]
    chosen = choose_weight(rows, base, tolerance=0.005)
    assert chosen["weight"] == 0.9 and chosen["qualified"] == [0.5, 0.8, 0.9]  # tie at 0.61: the larger weight
    assert choose_weight(rows, base, tolerance=0.03)["weight"] == 1.0
    none = choose_weight(rows, {"in_domain": 0.5, "general": 0.9}, tolerance=0.005)
    assert none["weight"] == 0.5 and none["qualified"] == [] and "no weight" in none["reason"]
    assert gain_kept(0.61, 0.62, 0.50) == pytest.approx(11 / 12) and gain_kept(0.5, 0.5, 0.5) is None


def test_merge_job_chooses_records_and_registers_the_merge(tmp_path, minilm_path, other_model, small_sets):
    from fastemb.merge.job import cli_summary, run_merge
    from fastemb.registry import Registry

    in_domain, general = small_sets
    spec = parse_spec({"job": "merge", "name": "m", "storage_path": str(tmp_path),
                       "models": [{"path": other_model}, {"path": minilm_path}], "grid": [0.5, 1.0],
                       "data": {"eval": in_domain}, "general": {"eval": general, "tolerance": 0.01},
                       "registry": str(tmp_path / "registry")})
    report = run_merge(spec)
    m = report["merge"]
    rows = {r["weight"]: r for r in m["grid"]}
    assert set(rows) == {0.5, 1.0} and m["chosen_by"] == "dev sets"
    assert m["weight"] == choose_weight(m["grid"], m["base_dev"], 0.01)["weight"]  # the rule, on the rows reported
    assert [x["weight"] for x in m["models"]] == [m["weight"], 1 - m["weight"]]
    merged = Encoder.load(report["model_dir"])
    expected = merged_encoder([Encoder.load(other_model), Encoder.load(minilm_path)], [m["weight"], 1 - m["weight"]])
    for (name, x), y in zip(merged.transformer.state_dict().items(), expected.transformer.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-6), name
    assert set(report["test"]) == {"in_domain", "general"}
    assert set(report["test"]["general"]) == {"merged", "models.0", "models.1"}
    saved = json.loads((Path(report["model_dir"]).parent / "report.json").read_text())
    assert saved["merge"] == m
    from fastemb.model.card import read_card

    card = read_card(report["model_dir"])  # the merged model's card: how it was merged, its figures
    assert "merge" in card.data.tags and f"{m['weight']:.4g}" in card.text
    assert any(r.metric_type == "cosine_ndcg@10" for r in card.data.eval_results)
    version = report["registry"]["version"]
    meta = Registry(str(tmp_path / "registry")).show(version)
    assert meta["config"]["merge"]["weight"] == m["weight"] and meta["config"]["merge"]["rule"] == m["rule"]
    assert meta["metrics"]["general"]["ndcg@10"] == report["test"]["general"]["merged"]["ndcg@10"]
    assert cli_summary(report)["registered"] == version


def test_merge_job_refuses_a_model_of_another_tokenizer(tmp_path, minilm_path, small_sets):
    from fastemb.merge.job import run_merge

    swapped = _swapped_vocabulary(minilm_path, tmp_path / "swapped")
    spec = parse_spec({"job": "merge", "storage_path": str(tmp_path), "data": {"eval": small_sets[0]},
                       "general": {"eval": small_sets[1]},
                       "models": [{"path": minilm_path, "weight": 0.5}, {"path": swapped, "weight": 0.5}]})
    with pytest.raises(MergeError, match=r"^models\.1\.path: tokenizer differs"):
        run_merge(spec)
    assert not (tmp_path / "merge" / "model").exists()


def test_continual_general_gate_keeps_production(tmp_path, minilm_path, other_model):
    """A candidate that gains in-domain but falls below its base on the general set minus the tolerance is
    registered, not promoted, when general.gate is on; its version records how it was merged."""
    from fastemb.registry import Registry
    from fastemb.train.continual import register_and_gate

    registry = Registry(str(tmp_path / "registry"))
    registry.promote(registry.register(minilm_path, {"ndcg@10": 0.5}, {"seed": True}))
    spec = parse_spec({"name": "c", "storage_path": str(tmp_path),
                       "continual": {"registry": str(tmp_path / "registry")},
                       "general": {"gate": True, "tolerance": 0.005}})
    shutil.copytree(other_model, spec.run_dir / "model")
    general = {"eval": "debian-descriptions", "base": {"ndcg@10": 0.80}, "tuned": {"ndcg@10": 0.79},
               "gate": {"metric": "ndcg@10", "base": 0.80, "tuned": 0.79, "delta": -0.01, "tolerance": 0.005,
                        "passed": False}}
    merge = {"weight": 0.8, "chosen_by": "export.merge.weight"}
    d = register_and_gate(spec, {"version": "v0001"}, {"base": {"ndcg@10": 0.5}, "tuned": {"ndcg@10": 0.6},
                                                       "general": general, "merge": merge}, evaluate=None)
    assert d["outcome"] == "rejected" and "(general.gate)" in d["reason"] and d["production_after"] == "v0001"
    meta = registry.show(d["candidate"])
    assert meta["config"]["merge"] == merge and meta["metrics"]["general"]["ndcg@10"] == 0.79
    open_gate = spec.model_copy(update={"general": spec.general.model_copy(update={"gate": False})})
    d = register_and_gate(open_gate, {"version": "v0001"}, {"base": {"ndcg@10": 0.5}, "tuned": {"ndcg@10": 0.6},
                                                            "general": general, "merge": merge}, evaluate=None)
    assert d["outcome"] == "promoted" and "general_gate" not in d


@pytest.fixture(scope="module")
def small_sets(tmp_path_factory) -> tuple[str, str]:
    """6 real queries per split against 16 texts: WordNet (in-domain) and Debian descriptions (general)."""
    from fastemb.data.eval_sets import write_subset

    root = tmp_path_factory.mktemp("small_sets")
    return (write_subset("wordnet", root / "wordnet", 6, 10),
            write_subset("debian-descriptions", root / "debian", 6, 10))


def test_tune_registers_its_winner_only_within_the_general_tolerance(tmp_path, minilm_path, small_sets):
    """With general.gate, the Tune winner is registered (recording how the trials were merged) when its general test
    nDCG@10 stays within the tolerance of the base's, and not registered when it falls below."""
    from fastemb.registry import Registry
    from fastemb.tune.job import register_winner
    from fastemb.tune.tuner import METRIC

    broken = Encoder.load(minilm_path)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # weights moved far enough to lose most of what the base retrieves
        for p in broken.transformer.encoder.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * p.std().clamp(min=1e-3))
    broken.save(tmp_path / "broken")
    spec = parse_spec({"job": "tune", "name": "t", "storage_path": str(tmp_path), "export": {"merge": {"weight": 0.7}},
                       "general": {"eval": small_sets[1], "gate": True, "tolerance": 0.0},
                       "tune": {"registry": str(tmp_path / "registry")}})
    winner = {METRIC: 0.5, "dev_ndcg@10": 0.6, "bytes_per_vector": 48, "compression_x": 32, "temperature": 0.05,
              "lr": 1e-4, "micro_batch_size": 16, "pq_bytes": 48, "trial_id": "t1"}
    refused = register_winner(spec, {**winner, "model_dir": str(tmp_path / "broken")})
    assert refused["registered"] is None and not refused["general_gate"]["passed"]
    kept = register_winner(spec, {**winner, "model_dir": minilm_path})  # the base itself: within a tolerance of 0
    assert kept["general_gate"]["passed"] and kept["registered"]
    meta = Registry(str(tmp_path / "registry")).show(kept["registered"])
    assert meta["config"]["merge"]["weight"] == 0.7
    assert meta["metrics"]["general_ndcg@10"] == kept["general_gate"]["tuned"]
