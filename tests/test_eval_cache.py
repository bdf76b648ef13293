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
