"""Multilingual distillation through the train job (fastemb/data/parallel.py, distill.embedding_mse.target:
positive, fastemb/train/multilingual.py): the spec's rules, temperature sampling, and a few real steps on Ray Train +
DeepSpeed on real iso-codes translations, the teacher embedding only the English side."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fastemb.data.pairs import DataError
from fastemb.data.parallel import language_shares, load_parallel_pairs
from fastemb.spec import SpecError, parse_spec

ROOT = Path(__file__).resolve().parents[1]


def _spec(**extra) -> dict:
    return {"data": {"train": "x.parquet"}, "multilingual": {"languages": ["de", "fr"]},
            "distill": {"teacher": "all-MiniLM-L6-v2", "infonce_weight": 0,
                        "embedding_mse": {"target": "positive"}}, **extra}



def test_spec_rules_name_the_field():
    from fastemb.spec import load_spec

    ok = parse_spec(_spec())
    assert ok.multilingual.languages == ["de", "fr"] and ok.distill.embedding_mse.target == "positive"
    mse_own = _spec()
    mse_own["distill"]["embedding_mse"] = {}
    kl_only = _spec()
    kl_only["distill"] = {"kl": {}}
    cases = [(kl_only, "multilingual: needs distill.embedding_mse with target: positive"),
             (mse_own, "target: positive"),
             (_spec(loss={"hard_negatives": 1}), "loss.hard_negatives: not with multilingual"),
             (_spec(multilingual={"languages": ["de"], "weights": {"fr": 2}}), r"weights: \['fr'\] not in languages"),
             (_spec(multilingual={"languages": []}), r"multilingual\.languages"),
             (_spec(multilingual={"languages": ["de"], "temperature": 0.5}), r"multilingual\.temperature")]
    for raw, message in cases:
        with pytest.raises(SpecError, match=message):
            parse_spec(raw)
    job = load_spec(ROOT / "jobs" / "multilingual.yaml")
    assert job.multilingual.languages[:6] == ["de", "fr", "es", "it", "pt", "nl"]
    assert job.distill.teacher == job.model.base and job.distill.embedding_mse.target == "positive"


def test_temperature_sampling_upsamples_small_languages(tmp_path):
    rows = [{"english": f"e{i}", "translation": f"d{i}", "language": "de"} for i in range(900)] + \
        [{"english": f"e{i}", "translation": f"n{i}", "language": "nl"} for i in range(100)] + \
        [{"english": "x", "translation": "", "language": "nl"}, {"english": "y", "translation": "z", "language": "ja"}]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert language_shares({"de": 900, "nl": 100}, 1.0) == pytest.approx({"de": 0.9, "nl": 0.1})
    assert language_shares({"de": 900, "nl": 100}, 2.0) == pytest.approx({"de": 0.75, "nl": 0.25})
    pairs, report = load_parallel_pairs(str(path), ["de", "nl"], 1000, temperature=2.0, seed=1)
    counts = {lang: sum(p["language"] == lang for p in pairs) for lang in ("de", "nl")}
    assert counts == {"de": 750, "nl": 250} and len(pairs) == report.kept == 1000
    assert report.by_language["nl"] == {"usable": 100, "share": 0.25, "drawn": 250, "upsampled": True}
    assert report.skipped == {"translation empty": 1, "language not in multilingual.languages": 1}
    assert all(p["query"][0] in "dn" and p["positive"][0] == "e" for p in pairs)  # query: translation
    with pytest.raises(DataError, match=r"no usable pairs for language\(s\) \['it'\]"):
        load_parallel_pairs(str(path), ["de", "it"])


@pytest.fixture(scope="module")
def iso_parallel(tmp_path_factory) -> Path:
    """Real parallel text: iso-codes' country and currency names in German and French, split by standard."""
    from fastemb.data.build_parallel import build

    out = tmp_path_factory.mktemp("parallel")
    build(out, languages=["de", "fr"], sources=["iso-codes"], test_fraction=0.3, seed=3)
    return out


def test_distillation_maps_translations_onto_the_teacher(ray_local, tmp_path, tiny_eval, iso_parallel, minilm_path):
    """A few MSE steps (2 workers, ZeRO-2) on real translations: the loss falls, the teacher embedded only the English
    texts, the report has the per-language table, the card the languages."""
    from fastemb.model.card import read_card
    from fastemb.train.job import run_train

    splits = {s: pq.read_table(iso_parallel / f"{s}.parquet") for s in ("train", "test")}
    assert splits["train"].num_rows > 100 and splits["test"].num_rows > 20
    spec = parse_spec({
        "name": "ml", "storage_path": str(tmp_path), "model": {"base": minilm_path, "max_length": 24},
        "data": {"train": str(iso_parallel / "train.parquet"), "max_pairs": 256, "eval": tiny_eval,
                 "test_queries": 20},
        "general": None,
        "multilingual": {"languages": ["de", "fr"], "temperature": 2.0, "test": str(iso_parallel / "test.parquet"),
                         "test_pairs": 40},
        "distill": {"teacher": minilm_path, "infonce_weight": 0, "embedding_mse": {"target": "positive"},
                    "embed": {"num_actors": 1, "batch_rows": 256}},
        "train": {"num_workers": 2, "micro_batch_size": 16, "max_steps": 8, "lr": 2e-4, "warmup_ratio": 0.0,
                  "schedule": "constant", "log_every": 1, "eval_every": 1000, "checkpoint_every": 1000},
    })
    report = run_train(spec)
    mse = [h["loss_embedding_mse"] for h in report["history"] if "loss_embedding_mse" in h]
    assert len(mse) == 8 and np.mean(mse[-3:]) < np.mean(mse[:3]), mse
    stored = pq.read_table(tmp_path / "ml" / "teacher" / "pairs.parquet")
    assert stored.column_names == ["query", "positive", "teacher_positive"]
    assert report["teacher_outputs"]["texts"] == len(set(stored.column("positive").to_pylist()))  # English only
    ml = report["multilingual"]
    assert set(ml["tokenizer"]) == {"de", "fr"} and all(not t["mostly_unknown"] for t in ml["tokenizer"].values())
    for lang in ("de", "fr"):
        for who in ("base", "tuned"):
            assert 0 <= ml[who][lang]["xx→en"]["accuracy@1"] <= 1 and ml[who][lang]["pairs"] == ml["test"][lang]["pairs"]
    assert (tmp_path / "ml" / "languages.png").stat().st_size > 1000 and "| de |" in \
        (tmp_path / "ml" / "languages.md").read_text()
    assert report["pairs"]["by_language"]["de"]["drawn"] + report["pairs"]["by_language"]["fr"]["drawn"] == 256
    card = read_card(report["model_dir"])
    assert {"en", "de", "fr"} <= set(card.data.language)
