"""The merge weight, chosen on the dev sets.

Rule (``RULE``): among the grid's weights whose general dev nDCG@10 is at least the base's minus the tolerance
(``general.tolerance``), the one with the highest in-domain dev nDCG@10, a tie going to the larger weight (the one
closer to the tuned model); when no weight qualifies, the one with the highest general dev nDCG@10. The weight is
the tuned model's: θ = w·θ_tuned + (1 − w)·θ_base, so 1 is the unmerged model and 0 the base.

Every model is scored at the merged model's length (the tuned model's, which the export gives the base's inference
length) on the same dev subsets.
"""
from __future__ import annotations

import logging

from fastemb.data.eval_sets import EvalSet
from fastemb.eval.retrieval import exact_search, metrics_of_hits
from fastemb.merge.weights import merged_encoder
from fastemb.model.encoder import Encoder

logger = logging.getLogger(__name__)

RULE = ("the highest in-domain dev nDCG@10 among the weights whose general dev nDCG@10 is at least the base's minus "
        "the tolerance (ties: the larger weight); if none is, the highest general dev nDCG@10")
METRIC = "ndcg@10"


def dev_scores(encoder: Encoder, dev_sets: dict[str, EvalSet]) -> dict[str, float]:
    """nDCG@10 of ``encoder`` on each dev set (exact search)."""
    out = {}
    for name, data in dev_sets.items():
        corpus, queries = encoder.encode(data.corpus), encoder.encode(data.queries)
        _, idx = exact_search(queries, corpus, 100, normalized=encoder.normalize)
        out[name] = metrics_of_hits(idx, data)[METRIC]
    return out


def score_grid(tuned: Encoder, base: Encoder, grid: list[float], dev_sets: dict[str, EvalSet],
               known: dict[float, dict[str, float]] | None = None) -> list[dict]:
    """Dev scores of θ = w·θ_tuned + (1 − w)·θ_base for each weight of ``grid`` (0 and 1 are the models
    themselves; ``known``: scores already measured, by weight); each row is ``{"weight": w, <set>: nDCG@10, ...}``."""
    rows = []
    for w in grid:
        if known and w in known:
            rows.append({"weight": w, **known[w]})
            continue
        model = tuned if w == 1 else base if w == 0 else merged_encoder([tuned, base], [w, 1 - w])
        rows.append({"weight": w, **dev_scores(model, dev_sets)})
        scores = ", ".join(f"{name} dev nDCG@10 {v:.4f}" for name, v in rows[-1].items() if name != "weight")
        logger.info(f"merge weight {w:g}: {scores}")
    return rows


def choose_weight(rows: list[dict], base: dict[str, float], tolerance: float, in_domain: str = "in_domain",
                  general: str = "general") -> dict:
    """The row ``RULE`` picks, with why: ``{"weight", "qualified", "reason"}``. ``base``: the base's dev scores."""
    floor = base[general] - tolerance
    qualified = [r for r in rows if r[general] >= floor - 1e-12]
    if qualified:
        best = max(qualified, key=lambda r: (r[in_domain], r["weight"]))
        reason = (f"in-domain dev nDCG@10 {best[in_domain]:.4f}, the highest of {len(qualified)} weight(s) keeping "
                  f"general dev nDCG@10 ≥ {floor:.4f} (base {base[general]:.4f} − {tolerance:g})")
    else:
        best = max(rows, key=lambda r: (r[general], r["weight"]))
        reason = (f"no weight keeps general dev nDCG@10 ≥ {floor:.4f}; the highest general dev nDCG@10 "
                  f"({best[general]:.4f})")
    return {"weight": best["weight"], "qualified": [r["weight"] for r in qualified], "reason": reason}


def gain_kept(merged: float, tuned: float, base: float) -> float | None:
    """The share of the tuned model's gain over the base that the merged model keeps (None without a gain)."""
    return (merged - base) / (tuned - base) if tuned > base else None


def select_weight(tuned: Encoder, base: Encoder, grid: list[float], dev_sets: dict[str, EvalSet],
                  tolerance: float, base_dev: dict[str, float] | None = None) -> dict:
    """Score the grid on ``dev_sets`` (``in_domain`` and ``general``) and apply ``RULE``; returns the facts a report
    keeps: the weight, the rule and its reason, every row, the base's and the tuned model's dev scores, and the share
    of the tuned model's in-domain dev gain the chosen weight keeps. ``base_dev``: the base's dev scores, if known."""
    base_dev = base_dev or dev_scores(base, dev_sets)
    rows = score_grid(tuned, base, grid, dev_sets, known={0.0: base_dev})
    tuned_dev = next((r for r in rows if r["weight"] == 1), None)
    tuned_dev = {k: v for k, v in tuned_dev.items() if k != "weight"} if tuned_dev else dev_scores(tuned, dev_sets)
    choice = choose_weight(rows, base_dev, tolerance)
    chosen = next(r for r in rows if r["weight"] == choice["weight"])
    facts = {"weight": choice["weight"], "chosen_by": "dev sets", "rule": RULE, "reason": choice["reason"],
             "tolerance": tolerance, "grid": rows, "qualified": choice["qualified"], "base_dev": base_dev,
             "tuned_dev": tuned_dev,
             "dev_gain_kept": gain_kept(chosen["in_domain"], tuned_dev["in_domain"], base_dev["in_domain"])}
    logger.info(f"merge weight {facts['weight']:g} chosen: {choice['reason']}")
    return facts
