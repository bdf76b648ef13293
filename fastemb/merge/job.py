"""``fastemb merge``: interpolate the weights of models of one architecture and tokenizer (fastemb/merge/weights.py),
with the weights given or chosen on the in-domain and general dev sets (fastemb/merge/select.py).

Writes to ``{storage_path}/{name}/``: ``model/`` (the merged model in sentence-transformers format, with
``models.0``'s settings and length) and ``report.json``: the models and their weights, how the weights were chosen
(the rule, every grid row), the in-domain and general test metrics of the merged model and of every input model,
and the share of the tuned model's test gain over the base the merge keeps. Whatever describes the merged model
afterwards (a model card, the registry) reads its facts from that report. All models are scored at the merged
model's length; no Ray is needed.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from fastemb.data.eval_sets import check_eval_set, load_eval_set
from fastemb.eval.general import general_gate
from fastemb.eval.retrieval import evaluate
from fastemb.merge.select import METRIC, gain_kept, select_weight
from fastemb.merge.weights import MergeError, check_mergeable, merged_encoder
from fastemb.model.card import CardUpdate, EvalSet, hub_id, key_values, write_card
from fastemb.model.encoder import Encoder
from fastemb.record import keep_spec
from fastemb.spec import MergeJob

logger = logging.getLogger(__name__)


def _load(spec: MergeJob) -> list[Encoder]:
    """Every model, at ``models.0``'s length, checked to be mergeable (errors name ``models.N.path``)."""
    encoders = []
    for i, m in enumerate(spec.models):
        try:
            encoders.append(Encoder.load(m.path).eval())
        except (OSError, ValueError) as err:
            raise MergeError(f"models.{i}.path: {err}") from None
    for e in encoders[1:]:
        e.max_length = encoders[0].max_length
    check_mergeable(encoders, [f"models.{i}.path" for i in range(len(encoders))])
    return encoders


def _weights(spec: MergeJob, encoders: list[Encoder]) -> tuple[list[float], dict]:
    """The weights, and how they were chosen."""
    if spec.fixed_weights:
        return spec.fixed_weights, {"chosen_by": "models.N.weight"}
    d, g = spec.data, spec.general
    dev_sets = {"in_domain": load_eval_set(d.eval, "dev", d.dev_queries, d.dev_corpus),
                "general": load_eval_set(g.eval, "dev", g.dev_queries, g.dev_corpus)}
    facts = select_weight(encoders[0], encoders[1], spec.grid, dev_sets, g.tolerance)
    return [facts["weight"], 1 - facts["weight"]], facts


def _test_metrics(spec: MergeJob, merged: Encoder, encoders: list[Encoder]) -> dict:
    """Test metrics of the merged model and of every input, on the in-domain set and the general one."""
    sets = {"in_domain": (spec.data.eval, spec.data.test_queries)}
    if spec.general:
        sets["general"] = (spec.general.eval, spec.general.test_queries)
    out = {}
    for name, (eval_dir, limit) in sets.items():
        data = load_eval_set(eval_dir, "test", limit)
        out[name] = {"merged": evaluate(merged, data),
                     **{f"models.{i}": evaluate(e, data) for i, e in enumerate(encoders)}}
        logger.info(f"{name} test nDCG@10: " + ", ".join(f"{k} {v[METRIC]:.4f}" for k, v in out[name].items()))
    return out


def _register(spec: MergeJob, test: dict, facts: dict) -> dict:
    """Register the merged model (refused when ``general.gate`` is on and it falls below the base's general score
    minus the tolerance); its version's config records how it was merged."""
    from fastemb.registry import Registry

    out: dict = {"registry": spec.registry, "version": None}
    general = test.get("general")
    if general and spec.general.gate:
        out["general_gate"] = gate = general_gate(general[f"models.{len(spec.models) - 1}"], general["merged"],
                                                  spec.general.tolerance)
        if not gate["passed"]:
            out["refused"] = (f"general {gate['metric']} {gate['tuned']:.4f} < the base's {gate['base']:.4f} − "
                              f"tolerance {gate['tolerance']:g} (general.gate)")
            logger.warning(f"not registered: {out['refused']}")
            return out
    metrics = {k: v for k, v in test["in_domain"]["merged"].items() if isinstance(v, (int, float))}
    metrics["eval_set"] = {"eval": spec.data.eval, "split": "test", "test_queries": spec.data.test_queries}
    if general:
        metrics["general"] = {**{k: v for k, v in general["merged"].items() if isinstance(v, (int, float))},
                              "eval_set": spec.general.eval}
    out["version"] = Registry(spec.registry).register(str(spec.run_dir / "model"), metrics,
                                                      {"job": spec.name, "merge": facts})
    logger.info(f"merged model registered as {out['version']} in {spec.registry}")
    return out


def merge_card(spec: MergeJob, facts: dict, test: dict) -> CardUpdate:
    """The merged model's card: how it was merged, and its test figures against the last model (the base)."""
    base = f"models.{len(spec.models) - 1}"
    evaluations = [EvalSet(label=name.replace("_", "-"), dataset=Path(eval_dir).name, split="test",
                           tuned=test[name]["merged"], base=test[name][base], max_seq_length=facts["max_seq_length"])
                   for name, eval_dir in (("in_domain", spec.data.eval),
                                          ("general", spec.general.eval if spec.general else None)) if name in test]
    rows = {"method": facts["method"], "chosen by": facts["chosen_by"],
            **{f"models.{i}": f"`{m['path']}` × {m['weight']:.4g}" for i, m in enumerate(facts["models"])},
            "test gain kept": f"{facts['test_gain_kept']:.1%}" if facts.get("test_gain_kept") is not None else None}
    return CardUpdate(title=f"{spec.name} (merged)", base_model=[hub_id(m.path) for m in spec.models],
                      tags=["merge"], evaluations=evaluations,
                      sections={"merge": key_values("Weight-space merge (fastemb merge)", rows)})


def run_merge(spec: MergeJob) -> dict:
    """Merge, score and (optionally) register; returns the report (also written to ``report.json``). The run folder
    keeps the resolved spec (``job.yaml``) and the merged model gets its card (``model/README.md``)."""
    t0 = time.time()
    keep_spec(spec)
    choosing = spec.fixed_weights is None
    check_eval_set(spec.data.eval, ("dev", "test") if choosing else ("test",), "data.eval")
    if spec.general:
        check_eval_set(spec.general.eval, ("dev", "test") if choosing else ("test",), "general.eval")
    encoders = _load(spec)
    weights, chosen = _weights(spec, encoders)
    merged = merged_encoder(encoders, weights)
    model_dir = spec.run_dir / "model"
    merged.save(model_dir)
    facts = {"method": "linear interpolation of the weights (WiSE-FT / LM-Cocktail)",
             "max_seq_length": merged.max_length,
             "models": [{"path": m.path, "weight": w} for m, w in zip(spec.models, weights)], **chosen}
    test = _test_metrics(spec, merged, encoders)
    if len(encoders) == 2:  # the first model's test gain over the second (its base) that the merge keeps
        scores = test["in_domain"]
        facts["test_gain_kept"] = gain_kept(scores["merged"][METRIC], scores["models.0"][METRIC],
                                            scores["models.1"][METRIC])
    report = {"name": spec.name, "model_dir": str(model_dir), "merge": facts, "test": test,
              "spec": spec.model_dump(mode="json"), "seconds": time.time() - t0,
              "card": str(write_card(model_dir, merge_card(spec, facts, test)))}
    if spec.registry:
        report["registry"] = _register(spec, test, facts)
    (spec.run_dir / "report.json").write_text(json.dumps(report, indent=2))
    logger.info(f"merged {len(encoders)} models with weights {[round(w, 4) for w in weights]} into {model_dir}")
    return report


def cli_summary(report: dict) -> dict:
    """What ``fastemb merge`` prints: the weights, how they were chosen, test nDCG@10 of each model, the folder."""
    m = report["merge"]
    return {"model_dir": report["model_dir"], "weights": [x["weight"] for x in m["models"]],
            "chosen_by": m["chosen_by"],
            "test_ndcg@10": {name: {k: v[METRIC] for k, v in scores.items()}
                             for name, scores in report["test"].items()},
            **({"registered": report["registry"]["version"]} if "registry" in report else {})}
