"""Evaluation results kept in a run folder (fastemb/eval/cache.py)."""
from __future__ import annotations

from fastemb.eval.cache import cached_metrics


def test_an_equal_key_reads_the_kept_metrics_and_another_measures_again(tmp_path):
    calls = []

    def measure(value: float):
        return lambda: calls.append(value) or {"ndcg@10": value}

    path = tmp_path / "base_metrics.json"
    assert cached_metrics(path, {"model": "a", "eval": "x"}, measure(0.5)) == {"ndcg@10": 0.5}
    assert cached_metrics(path, {"model": "a", "eval": "x"}, measure(0.9)) == {"ndcg@10": 0.5}  # kept
    assert cached_metrics(path, {"model": "a", "eval": "y"}, measure(0.7)) == {"ndcg@10": 0.7}  # another set
    assert calls == [0.5, 0.7]


def test_a_models_fingerprint_follows_its_files_but_not_its_card(tmp_path):
    from fastemb.eval.cache import weights_fingerprint

    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    (tmp_path / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    before = weights_fingerprint(tmp_path)
    (tmp_path / "README.md").write_text("# the model card, written after the evaluation")
    assert weights_fingerprint(tmp_path) == before
    (tmp_path / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    assert weights_fingerprint(tmp_path) != before


def test_the_shared_cache_keeps_metrics_by_key_and_can_be_turned_off(tmp_path, monkeypatch):
    from fastemb.eval.cache import METRICS_CACHE_ENV, shared_metrics

    calls = []

    def measure(value: float):
        return lambda: calls.append(value) or {"ndcg@10": value}

    monkeypatch.setenv(METRICS_CACHE_ENV, str(tmp_path / "cache"))
    assert shared_metrics({"weights": "a", "eval": "x"}, measure(0.5)) == {"ndcg@10": 0.5}
    assert shared_metrics({"weights": "a", "eval": "x"}, measure(0.9)) == {"ndcg@10": 0.5}  # kept
    assert shared_metrics({"weights": "b", "eval": "x"}, measure(0.7)) == {"ndcg@10": 0.7}  # other weights
    for f in (tmp_path / "cache").glob("*.json"):
        f.write_text("{torn")                                  # a damaged entry is measured again, not an error
    assert shared_metrics({"weights": "a", "eval": "x"}, measure(0.6)) == {"ndcg@10": 0.6}
    monkeypatch.setenv(METRICS_CACHE_ENV, "off")
    assert shared_metrics({"weights": "a", "eval": "x"}, measure(0.8)) == {"ndcg@10": 0.8}
    assert calls == [0.5, 0.7, 0.6, 0.8]


def test_evaluate_model_measures_a_changed_eval_set_or_model_again(tmp_path, monkeypatch, tiny_eval, minilm_path):
    """The shared cache's key holds the evaluation files' and the model folder's bytes: an edited file is measured
    again, an identical evaluation is read back."""
    import shutil

    import pyarrow.parquet as pq

    from fastemb.eval.retrieval import evaluate_model
    from fastemb.spec import parse_spec

    monkeypatch.setenv("FASTEMB_METRICS_CACHE", str(tmp_path / "cache"))
    eval_dir = tmp_path / "eval"
    shutil.copytree(tiny_eval, eval_dir)
    spec = parse_spec({"model": {"max_length": 32}, "data": {"eval": str(eval_dir), "test_queries": 10}})
    first = evaluate_model(spec.model, spec.data)
    assert evaluate_model(spec.model, spec.data) == first and len(list((tmp_path / "cache").glob("*.json"))) == 1
    queries = pq.read_table(eval_dir / "test_queries.parquet")
    pq.write_table(queries.slice(5), eval_dir / "test_queries.parquet")   # other queries: measured again
    assert evaluate_model(spec.model, spec.data)["queries"] == 10
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2
    model_dir = tmp_path / "model"
    shutil.copytree(minilm_path, model_dir)
    # a copy of the base holds the same bytes: the same model, read back
    assert evaluate_model(spec.model, spec.data, path=str(model_dir)) == evaluate_model(spec.model, spec.data)
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2
    (model_dir / "sentence_bert_config.json").write_text('{"max_seq_length": 16, "do_lower_case": false}')
    evaluate_model(spec.model, spec.data, path=str(model_dir))           # another file: another measurement
    assert len(list((tmp_path / "cache").glob("*.json"))) == 3
