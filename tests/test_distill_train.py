"""Distillation wired into training: the spec section, layer-subset students, stored teacher outputs (Ray Data),
and a few real distillation steps on Ray Train + DeepSpeed with a tiny teacher (MiniLM) and a 2-layer student."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoConfig

from fastemb.data.pairs import load_pairs
from fastemb.model.encoder import Encoder
from fastemb.model.layers import evenly_spaced_layers, keep_layers
from fastemb.spec import SpecError, parse_spec

TEXTS = ["a member of the genus Canis", "dog, domestic dog", "relating to the stars"]


@pytest.fixture(scope="module")
def pairs_with_negatives(tmp_path_factory) -> str:
    """192 WordNet train pairs, each with 2 negatives taken from other pairs' positives (seeded)."""
    pairs, _ = load_pairs("wordnet", 192, 0, 7)
    rng = random.Random(7)
    positives = [p["positive"] for p in pairs]
    rows = []
    for p in pairs:
        negs = [t for t in rng.sample(positives, 4) if t != p["positive"]][:2]
        rows.append({**p, "negatives": negs})
    path = tmp_path_factory.mktemp("distill_pairs") / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def test_distill_spec_errors_name_the_field():
    ok = parse_spec({"loss": {"hard_negatives": 2}, "model": {"num_layers": 3},
                     "distill": {"teacher": "all-mpnet-base-v2", "kl": {"temperature": 0.02}, "margin_mse": {},
                                 "hidden_state": {"layer_map": {0: 0, 3: 12}}}})
    assert ok.distill.kl.temperature == 0.02 and ok.distill.hidden_state.layer_map == {0: 0, 3: 12}
    assert ok.distill.online_teacher and ok.model.num_layers == 3
    cases = [({"distill": {"teacher": "x"}}, "distill: give at least one"),
             ({"distill": {"margin_mse": {}}}, "distill.margin_mse"),
             ({"distill": {"kl": {"in_batch": False}}}, "distill.kl"),
             ({"distill": {"kl": {"weight": 0}}}, "distill.kl.weight"),
             ({"distill": {"kl": {}, "infonce_weight": -1}}, "distill.infonce_weight"),
             ({"distill": {"kl": {}, "bogus": 1}}, "distill.bogus"),
             ({"model": {"keep_layers": [3, 1]}}, "model.keep_layers"),
             ({"model": {"keep_layers": [0], "num_layers": 1}}, "model.keep_layers and model.num_layers")]
    for raw, field in cases:
        with pytest.raises(SpecError, match=field.replace(".", r"\.")):
            parse_spec(raw)


def test_evenly_spaced_layers():
    assert evenly_spaced_layers(6, 3) == [0, 3, 5]
    assert evenly_spaced_layers(12, 4) == [0, 4, 7, 11]
    assert evenly_spaced_layers(6, 1) == [5]
    assert evenly_spaced_layers(6, 6) == list(range(6))
    with pytest.raises(ValueError, match="model.num_layers"):
        evenly_spaced_layers(6, 7)


def test_layer_subset_student_keeps_weights_and_loads_in_sentence_transformers(tmp_path, minilm_path):
    base = Encoder.load(minilm_path, max_length=32)
    student = Encoder.load(minilm_path, max_length=32)
    keep_layers(student.transformer, [0, 2, 4])
    for new, old in enumerate([0, 2, 4]):
        a, b = student.transformer.encoder.layer[new].state_dict(), base.transformer.encoder.layer[old].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    student.save(tmp_path / "student")
    assert AutoConfig.from_pretrained(tmp_path / "student").num_hidden_layers == 3
    ours = Encoder.load(str(tmp_path / "student")).encode(TEXTS)
    st_model = SentenceTransformer(str(tmp_path / "student"), device="cpu")
    assert len(st_model[0].auto_model.encoder.layer) == 3
    st = st_model.encode(TEXTS)
    assert np.abs(ours - st).max() <= 1e-5
    assert np.abs(ours - base.encode(TEXTS)).max() > 1e-3, "three layers should not equal six"
    with pytest.raises(ValueError, match="model.keep_layers"):
        keep_layers(Encoder.load(minilm_path).transformer, [0, 6])


def test_teacher_outputs_match_the_teacher_and_are_reused(ray_local, tmp_path, pairs_with_negatives, minilm_path):
    from fastemb.train.teacher_outputs import compute_teacher_outputs

    spec = parse_spec({"name": "t", "storage_path": str(tmp_path), "model": {"max_length": 32},
                       "data": {"train": pairs_with_negatives, "max_pairs": 24}, "loss": {"hard_negatives": 2},
                       "distill": {"teacher": minilm_path, "kl": {}, "embed": {"num_actors": 1, "batch_rows": 32}}})
    pairs, _ = load_pairs(spec.data.train, 24, 2, 3)
    rows, info = compute_teacher_outputs(spec, pairs)
    assert not info["reused"] and info["texts"] == len({t for p in pairs for t in (p["query"], p["positive"],
                                                                                   *p["negatives"])})
    teacher = Encoder.load(minilm_path, max_length=32)             # independent: plain encode, no Ray Data
    for p, r in zip(pairs, rows):
        assert r["query"] == p["query"] and r["negatives"] == p["negatives"]
        q, c = teacher.encode([p["query"]]), teacher.encode([p["positive"], *p["negatives"]])
        np.testing.assert_allclose(r["teacher_scores"], (c @ q.T).ravel(), atol=1e-4)
        np.testing.assert_allclose(r["teacher_query"], q[0], atol=1e-4)
    stored = tmp_path / "t" / "teacher" / "pairs.parquet"
    mtime = stored.stat().st_mtime_ns
    again, info2 = compute_teacher_outputs(spec, pairs)
    assert info2["reused"] and stored.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(np.array([r["teacher_scores"] for r in again]),
                                  np.array([r["teacher_scores"] for r in rows]))
    _, info3 = compute_teacher_outputs(spec, pairs[:20])    # other pairs: recomputed
    assert not info3["reused"]


def _other_vocabulary(minilm_path: str, out: Path) -> str:
    """A copy of MiniLM (weights linked) whose tokenizer has one token renamed: same sizes, another vocabulary."""
    out.mkdir()
    for f in Path(minilm_path).iterdir():
        (out / f.name).symlink_to(f)
    for name in ("tokenizer.json", "vocab.txt"):
        (out / name).unlink()
    tok = json.loads((Path(minilm_path) / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["[unused0]x"] = vocab.pop("[unused0]")
    (out / "tokenizer.json").write_text(json.dumps(tok))
    (out / "vocab.txt").write_text((Path(minilm_path) / "vocab.txt").read_text().replace("[unused0]\n", "[unused0]x\n", 1))
    return str(out)


def test_online_teacher_needs_the_same_tokenizer(tmp_path, minilm_path):
    from fastemb.train.distill import check_online_teacher

    other = _other_vocabulary(minilm_path, tmp_path / "other-vocab")
    spec = parse_spec({"distill": {"teacher": other, "hidden_state": {}}})
    with pytest.raises(SpecError, match="distill.hidden_state: per-token distillation needs the teacher's tokenizer"):
        check_online_teacher(spec)
    check_online_teacher(parse_spec({"distill": {"teacher": minilm_path, "hidden_state": {}}}))  # same vocabulary
    bad_map = parse_spec({"model": {"keep_layers": [0, 3]},
                          "distill": {"teacher": minilm_path, "hidden_state": {"layer_map": {2: 6, 3: 6}}}})
    with pytest.raises(SpecError, match="distill.hidden_state.layer_map"):
        check_online_teacher(bad_map)


def test_distillation_steps_end_to_end(ray_local, tmp_path, tiny_eval, pairs_with_negatives, minilm_path):
    """MiniLM (6 layers) teaches a 2-layer subset of itself: KL over mined-style candidates + InfoNCE, embedding
    MSE through a projection, hidden-state and attention terms with the teacher online; 2 workers, ZeRO-2."""
    from fastemb.train.job import run_train

    spec = parse_spec({
        "name": "distill", "storage_path": str(tmp_path), "model": {"keep_layers": [0, 3], "max_length": 32},
        "data": {"train": pairs_with_negatives, "eval": tiny_eval}, "general": None,
        "loss": {"hard_negatives": 2},
        "distill": {"teacher": minilm_path, "infonce_weight": 0.5, "kl": {"weight": 1.0, "temperature": 0.05},
                    "embedding_mse": {"weight": 10.0, "project": True}, "hidden_state": {"weight": 1.0},
                    "attention": {"weight": 0.5}, "embed": {"num_actors": 1, "batch_rows": 128}},
        "train": {"num_workers": 2, "micro_batch_size": 16, "epochs": 2, "lr": 2e-4, "warmup_ratio": 0.0,
                  "schedule": "constant", "log_every": 1, "eval_every": 1000, "checkpoint_every": 1000},
    })
    report = run_train(spec)
    losses = [h["loss"] for h in report["history"] if "loss" in h]
    assert len(losses) == report["plan"]["total_steps"] == 12
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    kl = [h["loss_kl"] for h in report["history"] if "loss_kl" in h]
    assert np.mean(kl[-3:]) < np.mean(kl[:3]), kl
    first = next(h for h in report["history"] if "loss" in h)  # the first progress entry (an engine entry precedes)
    assert {"loss_infonce", "loss_embedding_mse", "loss_hidden_state", "loss_attention"} <= set(first)
    assert report["teacher_outputs"]["reused"] is False
    assert (tmp_path / "distill" / "teacher" / "pairs.parquet").exists()

    model_dir = Path(report["model_dir"])                          # the student alone, loadable everywhere
    assert json.loads((model_dir / "config.json").read_text())["num_hidden_layers"] == 2
    st = SentenceTransformer(str(model_dir), device="cpu")
    assert not any("projection" in k or "heads" in k for k in st.state_dict())
    ours = Encoder.load(str(model_dir)).encode(TEXTS)
    assert np.abs(ours - st.encode(TEXTS)).max() <= 1e-5

    again = run_train(spec)                                        # a rerun reuses the stored teacher outputs
    assert again["teacher_outputs"]["reused"] is True


def test_shipped_distill_job_chains_from_the_mine_job():
    from fastemb.spec import load_spec

    root = Path(__file__).resolve().parents[1]
    mine, distill = load_spec(root / "jobs" / "mine.yaml"), load_spec(root / "jobs" / "distill.yaml")
    assert distill.distill.teacher == "all-mpnet-base-v2" and distill.model.base == "all-MiniLM-L6-v2"
    assert distill.distill.kl is not None and distill.distill.infonce_weight > 0
    assert distill.loss.hard_negatives == mine.mining.num_negatives
    assert (Path(mine.storage_path).name, mine.name, "pairs.parquet") == Path(distill.data.train).parts[-3:]


def test_kl_candidates_are_positive_negatives_and_other_positives(minilm_path):
    """The objective's KL term equals a loop over each query's explicit candidate list, where another row's
    positive that duplicates this row's positive is left out; teacher in-batch scores are t_q · t_p'."""
    from fastemb.losses import InfoNCELoss
    from fastemb.losses.distill_kl import DistillKLLoss
    from fastemb.train.batching import batch_hashes
    from fastemb.train.distill import DistillObjective, build_distill_model

    spec = parse_spec({"model": {"max_length": 16}, "loss": {"hard_negatives": 1},
                       "distill": {"teacher": minilm_path, "infonce_weight": 0, "kl": {"temperature": 0.1}}})
    student = Encoder.load(minilm_path, max_length=16)
    keep_layers(student.transformer, [0])
    model = build_distill_model(spec, student).eval()
    rng = np.random.default_rng(0)
    pos = ["a dog", "a cat", "a dog", "a star"]                     # rows 0 and 2 share their positive
    rows = [{"query": f"query {i}", "positive": p, "negatives": [f"negative {i}"],
             "teacher_scores": rng.normal(size=2).astype(np.float32),
             "teacher_query": rng.normal(size=8).astype(np.float32),
             "teacher_positive": rng.normal(size=8).astype(np.float32)} for i, p in enumerate(pos)]
    ids = {k: torch.from_numpy(v) for k, v in batch_hashes(rows, 1).items()}
    objective = DistillObjective(spec, model, InfoNCELoss(0.05, "cosine", False, True), None)
    with torch.no_grad():
        total, terms = objective(rows, ids)
        q = student.embed([r["query"] for r in rows])
        p = student.embed(pos)
        n = student.embed([r["negatives"][0] for r in rows])
        ref = []
        for i, r in enumerate(rows):
            others = [j for j in range(4) if pos[j] != pos[i]]
            cands = torch.stack([p[i], n[i], *[p[j] for j in others]]).unsqueeze(0)
            t = [*r["teacher_scores"], *[float(r["teacher_query"] @ rows[j]["teacher_positive"]) for j in others]]
            ref.append(DistillKLLoss(0.1)(q[i:i + 1], cands, torch.tensor([t])))
    assert set(terms) == {"kl"}
    assert abs(terms["kl"] - float(torch.stack(ref).mean())) < 1e-5
    assert abs(float(total) - terms["kl"]) < 1e-6
    with pytest.raises(KeyError, match="teacher outputs"):
        objective([{k: v for k, v in r.items() if k != "teacher_query"} for r in rows], ids)
