"""Continual learning: fine-tune a registry version on new data, then promote it or keep production.

``fastemb train`` with a ``continual`` section starts from a registry version (production by default)
instead of the base model. After training, the candidate and production are scored on the same eval
set (the job's test split, at the exported length); the candidate is registered with its parent version, a
fingerprint of its training data and how it was exported (length, merge), and promoted only if it scores at least
production + ``min_gain`` (``promote: auto``) and, with ``general.gate``, keeps its general test nDCG@10 within
``general.tolerance`` of the starting version's. A candidate that would regress is rejected: production (and the
service that follows it) stays on the previous version — the automatic rollback of a bad update.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from fastemb.data.pairs import resolve_pairs_path
from fastemb.registry import Registry
from fastemb.spec import TrainJob

logger = logging.getLogger(__name__)


def start_from_registry(spec: TrainJob) -> tuple[TrainJob, dict]:
    """The job with ``model.base`` set to the starting version's model folder, and that version's facts."""
    c = spec.continual
    registry = Registry(c.registry)
    version = registry.resolve(c.from_version)
    model = registry.local_model(version, spec.run_dir / "registry_cache")
    start = {"registry": c.registry, "version": version, "production": registry.state()["production"],
             "model": model}
    logger.info(f"continual: starting from {c.registry} {version} (production: {start['production']})")
    return spec.model_copy(update={"model": spec.model.model_copy(update={"base": model})}), start


def register_and_gate(spec: TrainJob, start: dict, scores: dict, evaluate: Callable[[str], dict]) -> dict:
    """Register the trained model as a child of the starting version, then promote it or keep production.

    ``scores``: the report's ``base``/``tuned`` test metrics of the starting model and of the candidate on the job's
    eval set, ``general`` (or None) and ``merge`` (or None); ``evaluate`` scores another model folder on that same
    set (used when production is not the start)."""
    c = spec.continual
    base, tuned, general = scores["base"], scores["tuned"], scores["general"]
    registry = Registry(c.registry)
    production = registry.state()["production"]
    if production is None:
        prod_metrics = None
    elif production == start["version"]:
        prod_metrics = base
    else:  # production moved since (or training started from another version): score it on the same set
        prod_metrics = evaluate(registry.local_model(production, spec.run_dir / "registry_cache"))
    eval_set = {"eval": spec.data.eval, "split": "test", "test_queries": spec.data.test_queries}
    metrics = {**_numbers(tuned), "eval_set": eval_set}
    if general:
        metrics["general"] = {**_numbers(general["tuned"]), "eval_set": general["eval"]}
    version = registry.register(
        str(spec.run_dir / "model"), metrics,
        {"job": spec.name, "train": spec.train.model_dump(), "loss": spec.loss.model_dump(),
         "data": spec.data.model_dump(), "export": spec.export.model_dump(), "merge": scores["merge"]},
        parent=start["version"], data_files=[str(resolve_pairs_path(spec.data.train))])
    ours = tuned[c.metric]
    theirs = prod_metrics[c.metric] if prod_metrics else float("-inf")
    decision = {"candidate": version, "parent": start["version"], "production_before": production,
                "metric": c.metric, "candidate_score": ours, "production_score": theirs,
                "gain": ours - theirs, "policy": c.promote}
    general_gate = general["gate"] if general and spec.general.gate else None
    if general_gate:
        decision["general_gate"] = general_gate
    refusal = _refusal(version, c.metric, ours, theirs, production, c.min_gain, general_gate)
    if c.promote == "never":
        decision["outcome"] = "registered"
    elif c.promote == "force" or refusal is None:
        registry.promote(version, c.metric, force=True) if c.promote == "force" else \
            registry.promote(version, c.metric, baseline=theirs + c.min_gain)
        decision["outcome"] = "promoted"
    else:
        decision["outcome"] = "rejected"   # the automatic rollback: production stays on the previous version
        decision["reason"] = refusal
    decision["production_after"] = registry.state()["production"]
    logger.info(f"continual: {version} {c.metric} {ours:.4f} vs production {production} {theirs:.4f} → "
                f"{decision['outcome']}; production is {decision['production_after']}")
    return decision


def _refusal(version: str, metric: str, ours: float, theirs: float, production: str | None, min_gain: float,
             general_gate: dict | None) -> str | None:
    """Why ``promote: auto`` keeps production instead of the candidate, or None when it promotes it."""
    if ours < theirs + min_gain:
        return (f"{version} {metric} {ours:.4f} < production {production} {theirs:.4f}"
                f"{f' + min_gain {min_gain:g}' if min_gain else ''}")
    if general_gate and not general_gate["passed"]:
        return (f"{version} general {general_gate['metric']} {general_gate['tuned']:.4f} < its base's "
                f"{general_gate['base']:.4f} − tolerance {general_gate['tolerance']:g} (general.gate)")
    return None


def _numbers(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}

