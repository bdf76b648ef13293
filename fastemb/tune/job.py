"""``fastemb tune``: Optuna/random search with ASHA over temperature, LR, batch size (large ones through the cached
loss), hard negatives, Matryoshka dimension and PQ code size.

The objective is dev nDCG@10 measured through the compressed code (Matryoshka truncation, then OPQ/PQ); the winner
is the best finished trial whose compression factor meets ``tune.min_compression``. ASHA judges no trial before its
learning-rate warm-up has ended. After the search the winner and the default configuration are scored once on the
test split at the same compression (``fastemb.tune.holdout``). A search whose driver died is resumed with
``Tuner.restore`` by running the same job again (finished trials are kept, not rerun).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from fastemb.data.pairs import pairs_fingerprint
from fastemb.model.card import CARD_FILE, CardUpdate, key_values, write_card
from fastemb.ray_env import init_ray
from fastemb.record import keep_spec, reproducible_record
from fastemb.spec import SPEC_FILE, TuneJob
from fastemb.spec.paths import absolute_inputs
from fastemb.tracking.run import Tracker, track_job
from fastemb.tune.results import PARAMS, summarize
from fastemb.tune.trial import load_search_pairs
from fastemb.tune.tuner import METRIC, build_tuner, check_search

logger = logging.getLogger(__name__)


def run_tune(spec: TuneJob) -> dict:
    """Run (or resume) the search; write the trials table, plots and the winner to the run folder. With
    ``tracking.mlflow`` the search is an MLflow run and each trial a child run of it (fastemb/tracking/tune.py)."""
    spec = absolute_inputs(spec)  # each trial runs in its own working directory
    init_ray(spec.ray.address, spec.ray.num_cpus, spec.train.cpus_per_worker)
    check_search(spec)
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    keep_spec(spec)
    tracker = track_job(spec)
    with tracker.running():
        pairs = load_search_pairs(spec)
        record = reproducible_record(spec, pairs_fingerprint(pairs))
        tracker.log_record(record)
        from fastemb.tracking.tune import TrialRuns

        callbacks = [TrialRuns(tracker.target, tracker.run_id, [METRIC, "dev_ndcg@10", "bytes_per_vector",
                                                                 "compression_x", "step"])] if tracker.enabled else []
        results = build_tuner(spec, len(pairs), callbacks).fit()
        summary = summarize(results, spec)
        winner = summary["winner"]
        if winner:
            write_card(winner["model_dir"], winner_card(spec, summary))
        if winner and spec.tune.compare_on_test:
            from fastemb.tune.holdout import winner_vs_default

            summary["test"] = winner_vs_default(spec, winner, summary["default"])
        if winner and spec.tune.registry:
            summary.update(register_winner(spec, winner))
        summary["record"], summary["mlflow"] = record, tracker.info()
        (spec.run_dir / "tune_summary.json").write_text(json.dumps(summary, indent=2, default=str))
        _publish(spec, summary, tracker)
    return summary


def winner_card(spec: TuneJob, summary: dict) -> CardUpdate:
    """The Tune winner's card: its trial card plus the search that picked it."""
    w, default, gain = summary["winner"], summary["default"], summary["winner_vs_default"]
    rows = {"search": f"`fastemb tune` job `{spec.name}`: {len(summary['trials'])} trials, {spec.tune.search} search, "
                      f"scheduler {spec.tune.scheduler}",
            "objective": f"{METRIC} (dev nDCG@10 through an {'OPQ' if spec.tune.opq else 'PQ'} code)",
            "winner": f"trial `{w['trial_id']}`: {METRIC} {w[METRIC]:.4f} at {w['compression_x']:.0f}× compression "
                      f"(the best trial compressing at least {spec.tune.min_compression:g}×)",
            "default configuration": f"{METRIC} {default[METRIC]:.4f}" if default and default[METRIC] is not None
            else None,
            "winner − default": f"{gain[METRIC]:+.4f}" if gain else None,
            "trials table": f"`{spec.run_dir / 'trials.md'}`"}
    return CardUpdate(tags=["ray-tune"], sections={"tune": key_values("Tune search (winner)", rows)})


def _publish(spec: TuneJob, summary: dict, tracker: Tracker) -> None:
    """The search's results in MLflow: the winner's figures and the search's files."""
    w = summary["winner"] or {}
    tracker.log_metrics({"trials": len(summary["trials"]), "errors": summary["errors"],
                         **{f"winner_{k}": w.get(k) for k in (METRIC, "dev_ndcg@10", "compression_x")},
                         **{f"winner_minus_default_{k}": v for k, v in (summary["winner_vs_default"] or {}).items()}})
    if w:
        tracker.set_tags({"fastemb.winner_trial": w["trial_id"], "fastemb.winner_model": w["model_dir"]})
    tracker.log_artifacts([spec.run_dir / name for name in ("trials.md", "tune_trials.png", "tune_summary.json",
                                                            SPEC_FILE)])
    if w:
        tracker.log_artifacts([Path(w["model_dir"]) / CARD_FILE], "winner_model")


def register_winner(spec: TuneJob, winner: dict) -> dict:
    """Register the winner in ``tune.registry`` with its dev metrics and parameters (and how the trials' exports
    were merged); with ``general.gate`` only when its general test nDCG@10 stays within ``general.tolerance`` of the
    base's (both at the exported length)."""
    from fastemb.registry import Registry

    out: dict = {"registered": None}
    metrics = {k: winner[k] for k in (METRIC, "dev_ndcg@10", "bytes_per_vector", "compression_x")}
    if spec.general and spec.general.gate:
        from fastemb.eval.general import general_gate
        from fastemb.eval.retrieval import evaluate_model
        from fastemb.train.export import at_export_length

        model = at_export_length(spec)
        gate = general_gate(evaluate_model(model, spec.general), evaluate_model(model, spec.general,
                                                                                path=winner["model_dir"]),
                            spec.general.tolerance)
        out["general_gate"] = gate
        metrics["general_ndcg@10"] = gate["tuned"]
        if not gate["passed"]:
            logger.warning(f"winner not registered: general nDCG@10 {gate['tuned']:.4f} < the base's "
                           f"{gate['base']:.4f} − tolerance {gate['tolerance']:g} (general.gate)")
            return out
    params = {k: winner.get(k) for k in PARAMS}  # None: not searched
    merge = spec.export.merge.model_dump() if spec.export.merge else None
    out["registered"] = Registry(spec.tune.registry).register(
        winner["model_dir"], metrics, {"tune": spec.name, "trial": winner["trial_id"], **params, "merge": merge})
    logger.info(f"winner registered as {out['registered']} in {spec.tune.registry}")
    return out


def cli_summary(summary: dict) -> dict:
    """What ``fastemb tune`` prints: the winner and the number of trials."""
    out = {"winner": summary["winner"], "trials": len(summary["trials"])}
    if summary.get("test"):
        out["test_gain_ndcg@10"] = summary["test"]["gain_ndcg@10"]
    return out
