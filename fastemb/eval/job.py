"""``fastemb eval``: retrieval metrics of one model on an evaluation split (exact search)."""
from __future__ import annotations

from fastemb.eval.retrieval import evaluate_model
from fastemb.spec import EvalJob
from fastemb.storage import write_json


def run_eval(spec: EvalJob) -> dict[str, float]:
    """Evaluate ``spec.model`` on ``spec.split`` of ``spec.data.eval``; writes the metrics to ``spec.output`` if set."""
    metrics = evaluate_model(spec.model, spec.data, spec.split, show_progress=True)
    if spec.output:
        write_json(spec.output, metrics)
    return metrics


def cli_summary(metrics: dict[str, float]) -> dict[str, float]:
    """What ``fastemb eval`` prints: the metrics."""
    return metrics
