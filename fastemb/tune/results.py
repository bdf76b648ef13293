"""Tune results: the trials table, the winner, and PNG plots."""
from __future__ import annotations

import logging
from pathlib import Path

from fastemb.spec import TuneJob
from fastemb.tune.tuner import METRIC, default_point

PARAMS = ("temperature", "lr", "micro_batch_size", "hard_negatives", "matryoshka_dim", "pq_bytes")  # None: not searched

logger = logging.getLogger(__name__)


def trial_rows(results, default: dict | None = None) -> list[dict]:
    """One row per trial: sampled params, last metrics, status, and whether it is the default config."""
    rows = []
    for r in results:
        cfg, m = r.config or {}, r.metrics or {}
        rows.append({
            "trial_id": m.get("trial_id") or (Path(r.path).name if r.path else None),
            **{p: cfg.get(p) for p in PARAMS},
            METRIC: m.get(METRIC), "dev_ndcg@10": m.get("dev_ndcg@10"),
            "bytes_per_vector": m.get("bytes_per_vector"), "compression_x": m.get("compression_x"),
            "reports": m.get("training_iteration"), "status": "ERROR" if r.error else
            ("FINISHED" if m.get("finished") else "STOPPED EARLY"),
            "default": default is not None and all(cfg.get(p) == v for p, v in default.items()),
        })
    return rows


def pick_winner(rows: list[dict], min_compression: float) -> dict | None:
    """Best objective among trials compressing at least ``min_compression``× (``summarize`` passes the finished
    ones: a trial ASHA stopped has no exported model)."""
    ok = [r for r in rows if r[METRIC] is not None and (r["compression_x"] or 0) >= min_compression]
    return max(ok, key=lambda r: r[METRIC]) if ok else None


def markdown_table(rows: list[dict]) -> str:
    cols = ["trial_id", *PARAMS, METRIC, "dev_ndcg@10", "compression_x", "reports", "status", "default"]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def summarize(results, spec: TuneJob) -> dict:
    """Write ``trials.md`` and ``tune_trials.png``; return the table, the winner and the default configuration's
    trial (each with its ``model_dir``: it exists once the trial has finished)."""
    from fastemb.plots import tune_trials

    rows = trial_rows(results, default_point(spec) if spec.tune.include_default else None)
    winner = pick_winner([r for r in rows if r["status"] == "FINISHED"], spec.tune.min_compression)
    default = next((r for r in rows if r["default"]), None)
    for row in (winner, default):
        if row:
            row["model_dir"] = str(Path(spec.storage_path) / f"{spec.name}-trial-{row['trial_id']}" / "model")
    (spec.run_dir / "trials.md").write_text(markdown_table(rows) + "\n")
    tune_trials(rows, METRIC, spec.run_dir / "tune_trials.png")
    label = (f"{winner['trial_id']} ({METRIC} {winner[METRIC]:.4f}, {winner['compression_x']:.0f}× compression)"
             if winner else f"none (no trial reached {spec.tune.min_compression:g}× compression)")
    logger.info(f"trials ({spec.run_dir / 'trials.md'}):\n{markdown_table(rows)}")
    logger.info(f"winner: {label}")
    vs_default = None
    if winner and default and default[METRIC] is not None:
        vs_default = {k: winner[k] - default[k] for k in (METRIC, "dev_ndcg@10") if default[k] is not None}
        logger.info(f"default configuration {METRIC} {default[METRIC]:.4f}; winner {vs_default[METRIC]:+.4f}")
    return {"trials": rows, "winner": winner, "default": default, "winner_vs_default": vs_default,
            "metric": METRIC, "errors": results.num_errors}
